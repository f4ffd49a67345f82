"""What model tokens cost: one price table per model family, in one place.

The figures are an ESTIMATE: Anthropic's published list prices (USD per million tokens) for
the current model of each family, as Claude Code's own pricing table carries them. They are
not a bill: a plan, a discount, a long-context surcharge or a new model changes what is paid.
Where Claude Code writes its own figure (a transcript entry's `costUSD`, `claude -p`'s
`total_cost_usd`), vermas.cost uses that instead.

A town overrides or adds families in town.toml:

    [cost.prices.opus]
    input = 5.0
    output = 25.0
    cache_read = 0.5
    cache_creation = 6.25
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FAMILY = "sonnet"  # an unknown model is priced as the middle family


class ModelPrice(BaseModel):
    """USD per million tokens of each kind."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(ge=0)
    cache_creation: float = Field(ge=0, description="5-minute cache writes (1.25x input)")


PRICES: dict[str, ModelPrice] = {
    "opus": ModelPrice(input=5.0, output=25.0, cache_read=0.5, cache_creation=6.25),
    "sonnet": ModelPrice(input=3.0, output=15.0, cache_read=0.3, cache_creation=3.75),
    "haiku": ModelPrice(input=1.0, output=5.0, cache_read=0.1, cache_creation=1.25),
}


class CostConfig(BaseModel):
    """`[cost]` in town.toml: price overrides by family (merged over PRICES)."""

    model_config = ConfigDict(extra="forbid")

    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    def table(self) -> dict[str, ModelPrice]:
        return {**PRICES, **self.prices}


def family(model: str, table: dict[str, ModelPrice] | None = None) -> str:
    """The family a model id belongs to: the first family name it contains (`claude-opus-4-5`
    is opus), else DEFAULT_FAMILY. Longest names first, so a custom `opus-fast` wins over `opus`."""
    names = sorted(table or PRICES, key=len, reverse=True)
    lowered = model.lower()
    return next((name for name in names if name in lowered), DEFAULT_FAMILY)


def estimate_usd(model: str, input_tokens: int, output_tokens: int, cache_read_tokens: int,
                 cache_creation_tokens: int, table: dict[str, ModelPrice] | None = None) -> float:
    """The list-price estimate of one model's tokens."""
    prices = table or PRICES
    price = prices.get(family(model, prices)) or PRICES[DEFAULT_FAMILY]
    return (input_tokens * price.input + output_tokens * price.output + cache_read_tokens * price.cache_read
            + cache_creation_tokens * price.cache_creation) / 1_000_000
