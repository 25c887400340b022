"""Acceptance counts and the seed card's table: one record shape for offline and live measurements.

vLLM counts, per verification step ("draft"), how many leading draft tokens the target accepted, and
exports `spec_decode_num_drafts` and `spec_decode_num_accepted_tokens_per_pos{position=i}` (the number of
drafts whose first i+1 tokens were all accepted). Per-position acceptance is per_pos[i] / num_drafts and
Avg Length = 1 + sum(per-position), the mean number of tokens one target forward confirms. The offline
simulator produces the very same counters, so both paths share this module and their tables compare
cell for cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AcceptanceCounts:
    """Raw counters, as vLLM keeps them: summable across prompts, sets and processes."""

    num_drafts: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0

    @classmethod
    def empty(cls, num_positions: int) -> AcceptanceCounts:
        return cls(0, [0] * num_positions, 0)

    @property
    def num_positions(self) -> int:
        return len(self.accepted_per_pos)

    @property
    def num_accepted_tokens(self) -> int:
        return sum(self.accepted_per_pos)

    def observe(self, num_draft_tokens: int, num_accepted: int) -> None:
        """Record one verification step that accepted the first `num_accepted` of its draft tokens."""
        if not 0 <= num_accepted <= num_draft_tokens <= self.num_positions:
            raise ValueError(f"bad draft: {num_accepted} accepted of {num_draft_tokens} ({self.num_positions} pos)")
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        for i in range(num_accepted):
            self.accepted_per_pos[i] += 1

    def merge(self, other: AcceptanceCounts) -> AcceptanceCounts:
        """Sum of two count records (positions padded to the longer one)."""
        n = max(self.num_positions, other.num_positions)
        pad = lambda v: v + [0] * (n - len(v))  # noqa: E731
        return AcceptanceCounts(
            self.num_drafts + other.num_drafts,
            [a + b for a, b in zip(pad(self.accepted_per_pos), pad(other.accepted_per_pos), strict=True)],
            self.num_draft_tokens + other.num_draft_tokens,
        )

    def per_position(self) -> list[float]:
        """Fraction of drafts whose first i+1 tokens were accepted, i = 0..K-1 (vLLM's per-position rate)."""
        if self.num_drafts == 0:
            return [0.0] * self.num_positions
        return [a / self.num_drafts for a in self.accepted_per_pos]

    def avg_length(self) -> float:
        """1 + sum of per-position rates: tokens confirmed per target forward (1.0 = no speedup)."""
        return 1.0 + sum(self.per_position())

    def to_json(self) -> dict:
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "accepted_per_pos": list(self.accepted_per_pos),
            "per_position": [round(x, 6) for x in self.per_position()],
            "avg_length": round(self.avg_length(), 6),
        }

    @classmethod
    def from_json(cls, data: dict) -> AcceptanceCounts:
        return cls(int(data["num_drafts"]), [int(x) for x in data["accepted_per_pos"]], int(data["num_draft_tokens"]))


def markdown_table(rows: dict[str, AcceptanceCounts], num_positions: int | None = None) -> str:
    """The seed card's table: `| Dataset | Pos 1 | ... | Pos K | Avg Length |`, percentages to 0.1%."""
    k = num_positions or max((c.num_positions for c in rows.values()), default=0)
    header = "| Dataset | " + " | ".join(f"Pos {i + 1}" for i in range(k)) + " | Avg Length |"
    lines = [header, "|" + "---|" * (k + 2)]
    for name, counts in rows.items():
        rates = counts.per_position() + [0.0] * (k - counts.num_positions)
        cells = " | ".join(f"{100 * r:.1f}%" for r in rates[:k])
        lines.append(f"| {name} | {cells} | {counts.avg_length():.2f} |")
    return "\n".join(lines)


def max_abs_rate_diff(a: AcceptanceCounts, b: AcceptanceCounts) -> float:
    """Largest per-position difference in acceptance rate between two measurements."""
    ra, rb = a.per_position(), b.per_position()
    n = max(len(ra), len(rb))
    ra, rb = ra + [0.0] * (n - len(ra)), rb + [0.0] * (n - len(rb))
    return max((abs(x - y) for x, y in zip(ra, rb, strict=True)), default=0.0)
