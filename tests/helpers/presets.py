"""The algorithm keys each preset of config/algorithms/ pairs with (tests build configs)."""

from __future__ import annotations

from typing import Any

PRESET_KEYS: dict[str, dict[str, Any]] = {
    "ppo": {"adv_estimator": "gae", "policy_loss_mode": "vanilla", "loss_agg_mode": "token-mean"},
    "grpo": {"adv_estimator": "grpo", "policy_loss_mode": "vanilla", "loss_agg_mode": "token-mean"},
    "gspo": {
        "adv_estimator": "grpo",
        "policy_loss_mode": "gspo",
        "loss_agg_mode": "seq-mean-token-mean",
    },
}
