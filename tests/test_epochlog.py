"""The log line per epoch (trainer/epochlog.py): one line for small groups, a short block for big ones."""

from __future__ import annotations

from trainer.epochlog import EpochWatch


def row(acc: float, csi: float, seconds: float | None = 4.12) -> dict[str, object]:
    return {"test_acc": acc, "csi_mean": csi, "seconds": seconds, "eval_seconds": 0.61, "images_per_s": 1496.4}


def test_one_line_for_a_small_group_and_a_block_for_a_big_one() -> None:
    watch = EpochWatch([], steps_per_epoch=11)
    watch.epochs = 12
    line = watch.lines(3, [("1a2b3c4d5e6f", row(0.95213, 0.3121)), ("9f8e7d6c5b4a", row(0.9602, 0.297))])
    assert line == [
        "epoch  3/12 | train 4.1 s, eval 0.6 s | 1,496 img/s x 2 | 1a2b3c4d5e6f acc 95.21% csi 0.312 | 9f8e7d6c5b4a acc 96.02% csi 0.297"
    ]
    assert watch.lines(0, [("1a2b3c4d5e6f", row(0.1031, 0.13, seconds=None))]) == [
        "epoch  0/12 (initial) | eval 0.6 s | 1a2b3c4d5e6f acc 10.31% csi 0.130"
    ]
    big = [(f"{i:012x}", row(0.9 + i / 100, 0.2 + i / 100)) for i in range(16)]
    first, second = watch.lines(5, big), watch.lines(6, big)
    assert first[0].startswith("members: 000000000000 000000000001") and len(first) == 4
    assert first[1].startswith("epoch  5/12 | train 4.1 s") and first[1].endswith("x 16")
    assert first[2].split()[2:4] == ["%", "90.00"] and first[3].split()[2:4] == ["0.200", "0.210"]
    assert len(second) == 3 and second[0].startswith("epoch  6/12")  # the members line only once
