"""Every threshold of every rule, configurable per pipeline.

Defaults come from ../shared/METRICS.md; those marked (h) are our own choice, each with its
reason beside it, checked on the labelled corpus of real tiny runs that
``python -m bench.detect_quality`` scores (services/diagnostics/README.md). A pipeline's
configuration is the default with its overrides merged in (``DiagnosticsSettings.for_pipeline``),
so a user writes only what differs. Unknown keys are rejected with the path of the bad key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from posttrain.events.messages.diagnostics import Severity as Severity  # libs/events owns it
from posttrain.events.messages.metrics import CORE_FIELDS
from posttrain.events.messages.pipeline import ActionKind as ActionKind  # libs/events owns it


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NonFiniteConfig(_Config):
    """NaN/Inf in any of ``fields``: one occurrence is enough (a NaN weight never heals, and
    every later step is lost); each field is named once per run of bad steps."""

    enabled: bool = True
    fields: tuple[str, ...] = CORE_FIELDS


class LossSpikeConfig(_Config):
    """value > mean + k*std over a rolling window (OLMo-core's stability monitor)."""

    enabled: bool = True
    field: str = "loss"
    # OLMo-core's 128 suits pretraining's flat loss. A fine-tuning loss falls steeply for its
    # first tens of steps, and a falling loss in the window inflates the std: over 128 points a
    # 6x spike at step 90 of a tiny SFT run is only 4 std. 64 points leave the fall sooner and
    # still give a stable std (healthy SFT/DPO runs of the corpus: at most 4.0 std; injected
    # spikes and divergences: 10 std and more) (h).
    window: int = Field(64, ge=2)
    k: float = Field(6.0, gt=0)  # OLMo-core's default
    min_points: int = Field(20, ge=2)  # (h) a std from fewer points is too uncertain
    # The spread used is at least this fraction of |mean|: a very smooth loss has a tiny std
    # and would otherwise call a 0.1% wiggle a spike (h).
    min_rel_std: float = Field(0.005, ge=0)
    min_abs_std: float = Field(1e-8, ge=0)
    # Not for sampled RL (a job that reports a reward spread or a KL: GRPO, PPO): its loss is a
    # policy-gradient surrogate, about beta x KL plus advantage-weighted noise, whose single
    # steps reach 10-12 std in healthy tiny GRPO runs (one KL estimate 10x its median). A
    # spike there is the KL's and the reward's to judge; rolling back is for a language-model
    # loss (PaLM). DPO reports neither key and keeps the rule.
    skip_sampled_rl: bool = True
    sampled_rl_keys: tuple[str, ...] = ("reward_std", "kl_divergence")


class KlConfig(_Config):
    """KL blow-up: absolute (kl > abs_factor * target, SB3), relative to the rolling median, and a
    flat saturated KL (verl clamps low_var_kl at +/-10)."""

    enabled: bool = True
    field: str = "kl_divergence"
    # No absolute target by default: what the trainers call "kl" differs by orders of
    # magnitude (verl's actor/ppo_kl is the old-vs-new policy KL of one update, ~1e-3; TRL
    # GRPO's kl is the per-token KL to the reference, 0.1-0.5 in healthy tiny runs at the
    # demo's settings, where SB3's 0.1 target would fire all the time). Set the target of
    # your setup to also judge the level against it (kl > abs_factor x target).
    target: float | None = None
    abs_factor: float = Field(1.5, gt=0)
    # Both checks judge the level, the median of the last ``smoothing`` points: the per-step
    # KL estimate of a small RL batch is heavy-tailed (single steps 10-50x the median in
    # healthy tiny GRPO runs, and runs of two or three high steps), and a blow-up is a level
    # that rises and stays: 5 high steps of the last 9 (h).
    smoothing: int = Field(9, ge=1)
    # The relative check: the level above ``median_factor`` x the median of the last
    # ``median_window`` points. On the corpus (bench.detect_quality) and the recorded healthy
    # GRPO run of the unit tests, healthy levels reach 4.4x that median (early, while the KL
    # climbs from 0), and runs whose learning rate was raised 30-100x reach 13-25x; 7x sits
    # between them. A long window keeps the baseline from following a KL that climbs over
    # tens of steps (h).
    median_window: int = Field(100, ge=2)
    median_factor: float = Field(7.0, gt=1)  # (h)
    median_min_points: int = Field(20, ge=1)  # (h) KL starts at 0 and rises at first
    # Below this the KL is small whatever its ratio to the median (KL starts at ~0) (h).
    median_floor: float = Field(0.01, ge=0)
    saturation_value: float | None = 10.0
    saturation_steps: int = Field(5, ge=1)


class RewardConfig(_Config):
    """Reward spike/drop by z-score over a window, and GRPO collapse (reward_std -> 0,
    frac_reward_zero_std -> 1)."""

    enabled: bool = True
    field: str = "reward_mean"
    window: int = Field(50, ge=2)
    # (h) 3 in METRICS.md; 4 here: a healthy tiny GRPO run (4 prompts a step) has a 3.3-sigma
    # step, and a Gaussian series crosses 3 sigma once every ~370 steps.
    z: float = Field(4.0, gt=0)
    min_points: int = Field(20, ge=2)
    detect_spike: bool = True
    detect_drop: bool = True
    min_abs_std: float = Field(0.05, ge=0)  # (h) rewards are often in [0, 1]
    min_rel_std: float = Field(0.05, ge=0)  # (h)
    std_field: str = "reward_std"
    collapse_std_eps: float = Field(1e-6, ge=0)
    zero_std_frac_keys: tuple[str, ...] = ("frac_reward_zero_std",)
    zero_std_frac_max: float = Field(0.8, ge=0, le=1)  # (h)
    collapse_steps: int = Field(5, ge=1)  # (h) consecutive steps before it is a collapse


class GradConfig(_Config):
    """Explosion: norms far above the median of the recent normal ones, sustained over several
    steps (ZClip's z-score and METRICS.md's "k x rolling median" together); vanishing: below
    eps for N steps."""

    enabled: bool = True
    field: str = "grad_norm"
    # The baseline is the last ``window`` normal norms, not ZClip's EMA (alpha 0.97): a
    # fine-tuning gradient falls tens of times over its first steps, and a 33-step EMA lags
    # so far behind (77x the norm, 35 steps after warm-up, in the SGD loop of the corpus) that
    # a 100x explosion there stayed under its z-score. 25 points: ZClip's warm-up length (h).
    window: int = Field(25, ge=2)
    warmup_points: int = Field(25, ge=2)  # norms seen before any is judged (ZClip's warm-up)
    z: float = Field(2.5, gt=0)  # ZClip's default, against the window's mean and std
    # A high step is also at least this many times the window's median: z alone fires on the
    # ordinary noise of small-batch RL (4x steps in healthy tiny GRPO runs), and an explosion
    # cuts the learning rate tenfold (h).
    min_ratio: float = Field(5.0, ge=1)
    # An explosion is ``persist_steps`` high steps among the last ``persist_window``: healthy
    # SFT and DPO runs of the corpus (bench.detect_quality) have single 5-12x steps and, three
    # times, two high steps within five, from hard batches; a run whose gradient has exploded
    # stays high (the SGD loop: 5 of 5). ZClip clips such single steps; the platform's action
    # (learning rate x0.1) is for a level (h).
    persist_steps: int = Field(3, ge=1)
    persist_window: int = Field(5, ge=1)
    min_abs_std: float = Field(1e-8, ge=0)
    vanish_eps: float = Field(1e-7, ge=0)
    vanish_steps: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _window_holds_the_steps(self) -> GradConfig:
        if self.persist_window < self.persist_steps:
            raise ValueError(
                f"grad.persist_window ({self.persist_window}) must be at least "
                f"grad.persist_steps ({self.persist_steps})"
            )
        return self


class PlateauConfig(_Config):
    """ReduceLROnPlateau semantics. One evaluation is the mean of ``field`` over ``eval_every``
    points (1 for a field such as eval_loss that is already an evaluation)."""

    enabled: bool = True
    field: str = "loss"
    mode: Literal["min", "max"] = "min"
    eval_every: int = Field(50, ge=1)  # (h): per-step training loss is too noisy to judge alone
    # PyTorch's ReduceLROnPlateau defaults (patience, threshold, mode, cooldown).
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(0, ge=0)


class EntropyConfig(_Config):
    """Collapse: the recent EMA of entropy falls below ``ratio`` x its early EMA. Only for jobs
    that report rewards (RL): in SFT a falling entropy is the model learning."""

    enabled: bool = True
    field: str = "entropy"
    # (h) METRICS.md: entropy falls ~73% in 200 steps in healthy RL runs (arXiv 2505.22617);
    # below 30% of its early level is past that. The corpus's collapsed GRPO runs end at <5%.
    ratio: float = Field(0.3, gt=0, lt=1)
    early_points: int = Field(20, ge=1)
    early_alpha: float = Field(0.9, gt=0, lt=1)
    recent_alpha: float = Field(0.8, gt=0, lt=1)
    rl_only: bool = True


class LengthConfig(_Config):
    """Response length explosion/collapse by z-score of the mean length, and a rising clip
    ratio."""

    enabled: bool = True
    field: str = "response_length_mean"
    window: int = Field(50, ge=2)
    z: float = Field(4.0, gt=0)  # (h)
    min_points: int = Field(20, ge=2)
    min_rel_change: float = Field(0.25, ge=0)  # (h) and at least 25% off the mean
    min_abs_std: float = Field(1.0, ge=0)  # (h) one token
    clip_ratio_keys: tuple[str, ...] = (
        "response_length_clip_ratio",
        "response_length/clip_ratio",
        "completions/clipped_ratio",
    )
    clip_ratio_max: float = Field(0.2, ge=0, le=1)  # (h)
    # "Rising": also this much above the mean of the first ``min_points`` ratios (h).
    clip_ratio_rise: float = Field(0.1, ge=0)
    # Both judge the mean of the last N ratios: one step's ratio over a small batch is noisy
    # (31% for one step, about 2% around it, in a healthy tiny GRPO run of 32 completions) (h).
    clip_ratio_smoothing: int = Field(5, ge=1)


class MemoryConfig(_Config):
    """GPU OOM early warning: reserved memory near capacity, a trend projected past capacity, or
    the allocator's retry/OOM counters rising."""

    enabled: bool = True
    field: str = "gpu_memory_allocated_gb"
    reserved_keys: tuple[str, ...] = ("gpu_memory_reserved_gb", "gpu_memory_reserved_gib")
    capacity_gb: float | None = None  # else read from the point's custom keys
    capacity_keys: tuple[str, ...] = ("gpu_memory_total_gb", "gpu_memory_total_gib")
    near_fraction: float = Field(0.92, gt=0, le=1)  # (h)
    trend_points: int = Field(20, ge=2)  # (h)
    trend_horizon_steps: int = Field(50, ge=1)  # (h)
    counter_keys: tuple[str, ...] = ("num_alloc_retries", "num_ooms")


class NewBestRewardConfig(_Config):
    """The smoothed reward above every earlier value by more than ``min_delta``."""

    enabled: bool = True
    field: str = "reward_mean"
    smoothing: int = Field(5, ge=1)  # (h) mean of the last N rewards: noise is not a best
    min_delta: float = Field(0.01, ge=0)  # (h)
    warmup_points: int = Field(10, ge=1)  # (h)
    min_steps_between: int = Field(20, ge=0)  # (h) at most one checkpoint per N steps


class DetectorConfig(_Config):
    """Every rule's thresholds for one pipeline."""

    non_finite: NonFiniteConfig = NonFiniteConfig()
    loss_spike: LossSpikeConfig = LossSpikeConfig()
    kl: KlConfig = KlConfig()
    reward: RewardConfig = RewardConfig()
    grad: GradConfig = GradConfig()
    plateau: PlateauConfig = PlateauConfig()
    entropy: EntropyConfig = EntropyConfig()
    length: LengthConfig = LengthConfig()
    memory: MemoryConfig = MemoryConfig()
    new_best_reward: NewBestRewardConfig = NewBestRewardConfig()


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested dicts."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class ActionRule(_Config):
    """What to ask the orchestrator for when an anomaly of one type is raised."""

    action: ActionKind
    factor: float | None = None  # adjust_learning_rate: the multiplier
    cooldown_steps: int = Field(0, ge=0)  # no second action of this rule within N steps
    rollback_steps: int | None = None  # rollback: how far back (PaLM: ~100 steps)
    skip_batches: int | None = None  # rollback: data batches to skip after it (PaLM: 200-500)


def _default_action_rules() -> dict[str, ActionRule | None]:
    return {
        "nan_inf": ActionRule(action="pause"),
        "grad_explosion": ActionRule(action="adjust_learning_rate", factor=0.1, cooldown_steps=100),
        "new_best_reward": ActionRule(action="force_checkpoint"),
        "loss_spike": ActionRule(
            action="rollback", rollback_steps=100, skip_batches=300, cooldown_steps=200
        ),
    }


class ActionPolicyConfig(_Config):
    """Automatic actions. ``dry_run`` only recommends (ActionRecommended); a rule set to null
    turns that action off."""

    enabled: bool = True
    dry_run: bool = False
    rules: dict[str, ActionRule | None] = Field(default_factory=_default_action_rules)


class AlertChannel(_Config):
    """One destination: a Slack incoming webhook, a Feishu/Lark custom bot, or a generic JSON
    webhook. ``secret`` is Feishu's signature secret or the HMAC-SHA256 key of the webhook."""

    name: str
    kind: Literal["slack", "feishu", "webhook"]
    url: str
    secret: str | None = None
    min_severity: Severity = "warning"
    types: tuple[str, ...] | None = None  # only these anomaly types (None: all)


class AlertConfig(_Config):
    channels: tuple[AlertChannel, ...] = ()
    cooldown_s: float = Field(600.0, ge=0)  # per (job, anomaly type)
    max_attempts: int = Field(4, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    timeout_s: float = Field(5.0, gt=0)


class PipelineConfig(_Config):
    """Everything diagnostics does for one pipeline."""

    detectors: DetectorConfig = DetectorConfig()
    actions: ActionPolicyConfig = ActionPolicyConfig()
    alerts: AlertConfig = AlertConfig()


class ConfigBook:
    """The default configuration and each pipeline's overrides, resolved once per pipeline."""

    def __init__(
        self,
        default: dict[str, Any] | None = None,
        pipelines: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._default_raw = default or {}
        self._overrides = pipelines or {}
        self.default = PipelineConfig.model_validate(self._default_raw)
        self._resolved: dict[str, PipelineConfig] = {}
        for pipeline_id in self._overrides:
            self.for_pipeline(pipeline_id)  # reject a bad override at start, not mid-run

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfigBook:
        """``{"default": {...}, "pipelines": {"<pipeline_id>": {...}}}``."""
        unknown = set(data) - {"default", "pipelines"}
        if unknown:
            raise ValueError(f"diagnostics config: unknown top-level keys {sorted(unknown)}")
        return cls(data.get("default"), data.get("pipelines"))

    def for_pipeline(self, pipeline_id: str | None) -> PipelineConfig:
        if pipeline_id is None or pipeline_id not in self._overrides:
            return self.default
        config = self._resolved.get(pipeline_id)
        if config is None:
            raw = merge(self._default_raw, self._overrides[pipeline_id])
            try:
                config = PipelineConfig.model_validate(raw)
            except ValueError as exc:
                raise ValueError(f"diagnostics config of pipeline {pipeline_id!r}: {exc}") from exc
            self._resolved[pipeline_id] = config
        return config
