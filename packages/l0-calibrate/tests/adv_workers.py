"""Child-process programs of test_adversarial.py (run with ``python adv_workers.py NAME ...``)."""

import os
import signal
import sys
import time


def frozen_rank(rank: str, out_dir: str, timeout_s: str) -> None:
    """One rank of a 2-rank fit; rank 1 stops itself (SIGSTOP) at epoch 20."""
    import numpy as np
    import torch
    from l0_calibrate import ShardCheckpoint, ShardedCalibrationWeights, init_distributed
    from l0_calibrate.distributed_reducer import RankLostError

    ctx = init_distributed("gloo", timeout_s=float(timeout_s))
    rng = np.random.default_rng(0)
    M = np.abs(rng.normal(size=(4, 40)))
    y = M.sum(axis=1)
    model = ShardedCalibrationWeights(40, seed=0)
    local = M[:, model.shard.columns]
    ckpt = ShardCheckpoint(os.path.join(out_dir, "rank{rank}-{epoch}.pt"), every=10)

    def freeze(event: dict) -> None:
        if ctx.rank == 1 and event["epoch"] == 20:
            with open(os.path.join(out_dir, "stopped_at"), "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGSTOP)

    try:
        model.fit(
            local,
            y,
            epochs=10_000,
            lr=0.05,
            loss_type="relative",
            verbose_freq=10,
            callbacks=[ckpt, freeze],
        )
    except RankLostError as exc:
        with open(os.path.join(out_dir, f"error{ctx.rank}.txt"), "w") as f:
            f.write(f"{time.time()!r}\n{exc.lost_ranks}\n{exc.checkpoint}\n{exc}")
        os._exit(7)
    torch.save({}, os.path.join(out_dir, f"finished{ctx.rank}"))


def slow_checkpoint(folder: str) -> None:
    """Write a small checkpoint, say so, then write big ones to the same path until killed."""
    import torch
    from l0_calibrate import Checkpoint, SparseCalibrationWeights

    class Big:
        def __init__(self, n: int) -> None:
            self.n = n

        def state_dict(self) -> dict:
            state = SparseCalibrationWeights(5, seed=0).state_dict()
            state["padding"] = torch.ones(self.n)
            return state

    ckpt = Checkpoint(os.path.join(folder, "ckpt.pt"))
    ckpt({"epoch": 1, "model": SparseCalibrationWeights(5, seed=0)})
    print("first", flush=True)
    while True:
        ckpt({"epoch": 2, "model": Big(40_000_000)})


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
