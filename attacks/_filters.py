"""What the two filter attacks share: ``filter-adversarial`` (learn class filters that undo the protection by
gradient ascent) and ``filter-estimate`` (estimate them from known clean/protected pairs and undo them). They were
one attack, ``filter-retrain``, whose ``method`` field chose between them; a recipe that still names it is told
which to use."""
from __future__ import annotations

from pydantic import Field, model_validator

from attacks.base import ATTACKS
from lab.config import PluginConfig

ATTACKS.retire("filter-retrain", "it became two attacks: filter-adversarial (was method: adversarial) and "
                                 "filter-estimate (was method: estimate); name one as the type, without 'method'")


class FilterConfig(PluginConfig):
    """``filter_length``: taps of the attacker's filters, odd (centred lags -L..L)."""

    filter_length: int = Field(63, ge=1)

    @model_validator(mode="after")
    def _odd(self):
        if self.filter_length % 2 == 0:
            raise ValueError(f"filter_length must be odd (centred lags -L..L), got {self.filter_length}")
        return self
