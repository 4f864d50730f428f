"""The training machinery shared by ``tte2tee train`` and ``tte2tee adapt``: the run config, the
loop (:func:`~tte2tee_fast.training.loop.fit`), checkpoints and the EMA. Import the submodules
directly."""
