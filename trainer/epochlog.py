"""A log line per epoch for a group of trials (nanoGPT style), and the hand-over to its trackers.

    watch = EpochWatch(members, steps_per_epoch)   # trainer.epochs builds one per set of members
    watch.epoch_end(epoch, members)                # after the epoch's rows and checkpoints
    watch.close()                                  # the attempt ends: trackers drain (bounded)

What the worker's log (trainer.log) then says, read from the rows just written:

    epoch  3/12 | train 4.1 s, eval 0.6 s | 1,496 img/s x 2 | 1a2b3c4d5e6f acc 95.21% csi 0.312 | 9f8e7d6c5b4a acc ...

A group of more than 4 trials prints a short block instead: the same head, then a line of test
accuracies and one of mean CSI, in the order of the `members` line printed once at the start.
img/s is one network's training throughput; x K says how many trained side by side (fused).
The trackers (trainer/trackers.py) are imported only when a member's spec asks for one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from trainer import results as R

if TYPE_CHECKING:
    from trainer.epochs import Member
    from trainer.trackers import Feed

ONE_LINE_UP_TO = 4  # members; more get a block with one column per member


def _print(line: str) -> None:
    print(line, flush=True)  # the worker's stdout is its log file: flush, so `tail -f` sees each epoch


class EpochWatch:
    def __init__(self, members: Sequence[Member], steps_per_epoch: int, say: Callable[[str], None] = _print) -> None:
        self.say, self.epochs = say, members[0].spec.epochs if members else 0
        self.feed: Feed | None = None
        self.legend = False
        if any(m.spec.trackers for m in members):
            from trainer.trackers import Feed  # the tracker packages load only when asked for

            self.feed = Feed([(m.spec, m.attempt.folder, m.log) for m in members], steps_per_epoch, say)

    def epoch_end(self, epoch: int, members: Sequence[Member]) -> None:
        """The line (or block) of `epoch` for the members that recorded it; then their rows go to the trackers."""
        try:
            rows = [(m.spec.trial_id, _last_row(m)) for m in members]
            for line in self.lines(epoch, rows):
                self.say(line)
        except (IndexError, KeyError, TypeError, ValueError) as err:  # a log line must never end a trial
            self.say(f"epoch {epoch}: no log line ({type(err).__name__}: {err})")
        if self.feed is not None:
            self.feed.send()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()

    def lines(self, epoch: int, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        if not rows:
            return []
        first = rows[0][1]
        head = f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}"
        if first["seconds"] is None:
            head += f" (initial) | eval {first['eval_seconds']:.1f} s"
        else:
            speed = f"{first['images_per_s'] or 0:,.0f} img/s x {len(rows)}"
            head += f" | train {first['seconds']:.1f} s, eval {first['eval_seconds']:.1f} s | {speed}"
        if len(rows) <= ONE_LINE_UP_TO:
            return [head + "".join(f" | {tid} acc {_pct(r['test_acc'])} csi {_num(r['csi_mean'])}" for tid, r in rows)]
        out = []
        if not self.legend:
            out.append("members: " + " ".join(tid for tid, _ in rows))
            self.legend = True
        out += [head, "  test acc % " + " ".join(_pct(r["test_acc"], sign=False) for _, r in rows)]
        out.append("  csi mean   " + " ".join(_num(r["csi_mean"]) for _, r in rows))
        return out


def _last_row(m: Member) -> dict[str, Any]:
    table = m.log.tables[R.EPOCHS][-1]
    return dict(table.slice(table.num_rows - 1).to_pylist()[0])


def _pct(value: float | None, sign: bool = True) -> str:
    return "-" if value is None else f"{100 * value:.2f}{'%' if sign else ''}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
