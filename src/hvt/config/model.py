"""The pydantic model of config/config.yaml: upstream's shape, every knob typed and bounded.

Field-level rules live here (types, ranges, enums, simple string rules). Rules that look at more
than one field live in `rules.py`; scans of the raw file (unfilled markers, placeholders,
secrets) live in `scan.py`. `load.validate_file` runs all three.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Multiplier = Annotated[float, Field(gt=0)]
# a Ray node label value (hvt-node=<name>): letters, digits, '-', '_', '.', at most 63
NODE_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"


class Section(BaseModel):
    """Every section refuses unknown keys and never coerces across types silently."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class Model(Section):
    model_path: str = Field(description="directory with config.json and the weights")
    served_model_name: str = Field(default="vllm_model", min_length=1)

    @field_validator("served_model_name")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        if "/" in value:
            raise ValueError(
                f"must not contain '/' (got {value!r}); claude-code gets 404 from the proxy"
                " -- use a plain name such as vllm_model"
            )
        return value


class Data(Section):
    data_dir: str
    train_index: str
    val_index: str


class Infrastructure(Section):
    node0_ip: str = ""
    nnodes: PositiveInt = 1
    ngpus_per_node: PositiveInt = 8
    # the trainer hosts' names, head first (Ansible writes them from the inventory's trainer
    # group): the head waits for each by name, and a node that did not join is named. Empty:
    # the head waits for nnodes nodes, whatever their names (each node's HVT_NODE_NAME or host)
    node_names: list[Annotated[str, Field(pattern=NODE_NAME)]] = []
    node_join_timeout: Seconds = 900  # how long the head waits for the other nodes to join
    ray_port: Port = 6379
    ray_dashboard_port: Port = 8265
    litellm_port: Port = 8002
    litellm_workers: Literal["auto"] | PositiveInt = "auto"
    vllm_logging_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    anthropic_api_key: str = ""

    @field_validator("litellm_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        """One clear problem for every bad value (not one per member of the union)."""
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError(
            f"must be a whole number of LiteLLM worker processes (1 or more) or 'auto', got "
            f"{value!r} -- write litellm_workers: auto (one per usable core of the proxy less "
            "one, at most 8; docs/proxy.md) or a number such as 2"
        )


class Environment(Section):
    venv_path: str = ""


class K8s(Section):
    kubeconfig: str = ""
    namespace: str = Field(default="rl-sandboxes", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    pod_startup_timeout: Seconds = 1200
    pod_active_deadline_seconds: Seconds = 6000


class Vllm(Section):
    gen_tp: PositiveInt = 4
    max_model_length: PositiveInt = 128000
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_num_seqs: PositiveInt = 96
    enforce_eager: bool = False
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    enable_chunked_prefill: bool = True
    tool_call_parser: str = Field(default="qwen3_coder", min_length=1)


class Training(Section):
    train_batch_size: PositiveInt = 64
    val_batch_size: PositiveInt = 500
    n_resp_per_prompt: PositiveInt = 8
    train_prompt_mini_batch_size: PositiveInt = 64
    max_prompt_length: PositiveInt = 40000
    max_response_length: PositiveInt = 68000
    sp_size: PositiveInt = 4
    use_dynamic_bsz: bool = True
    micro_batch_size_per_gpu: PositiveInt = 1  # only without use_dynamic_bsz
    ref_offload: bool = True
    actor_offload: bool = True
    total_epochs: PositiveInt = 3
    save_freq: int = Field(default=5, ge=-1)
    test_freq: int = Field(default=5, ge=-1)
    val_before_train: bool = False
    # sync: every step waits for its slowest trial. colocate_async (verl v1): about
    # 1 + async_warmup_batches batches in flight; each step trains on the first to finish, slow
    # trials carry over, generation is aborted at each update. separate_async: not built yet.
    mode: Literal["sync", "colocate_async", "separate_async"] = "sync"
    async_warmup_batches: PositiveInt = 1
    max_off_policy_threshold: PositiveInt = 8  # weight versions one trial may span
    max_off_policy_strategy: Literal["drop", "wait"] = "drop"  # for a trial beyond it


class Algorithm(Section):
    preset: str = "gspo"
    adv_estimator: Literal["gae", "grpo", "rloo", "reinforce_plus_plus", "remax"] | None = None
    policy_loss_mode: Literal["vanilla", "gspo", "clip-cov", "kl-cov", "gpg"] | None = None
    learning_rate: float = Field(default=1.0e-6, gt=0, lt=1)
    use_kl_loss: bool = False
    kl_loss_coef: float = Field(default=0.001, ge=0)
    kl_loss_type: Literal["kl", "abs", "mse", "low_var_kl", "full"] = "low_var_kl"
    clip_ratio_low: float = Field(default=3.0e-4, gt=0)
    clip_ratio_high: float = Field(default=4.0e-4, gt=0)
    entropy_coeff: float = Field(default=0.0, ge=0)
    loss_agg_mode: (
        Literal[
            "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
        ]
        | None
    ) = None
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=-1, ge=-1)
    val_temperature: float = Field(default=0.0, ge=0)
    val_top_p: float = Field(default=1.0, gt=0, le=1)
    val_top_k: int = Field(default=-1, ge=-1)


class HostPathMount(Section):
    host_path: str = Field(pattern=r"^/")
    mount_path: str = Field(pattern=r"^/")
    read_only: bool = True
    type: Literal["Directory", "DirectoryOrCreate", "File", "FileOrCreate", ""] = "Directory"


class DockerHost(Section):
    """One daemon of a sandbox fleet (harbor_agent.docker_hosts)."""

    docker_host: str = Field(pattern=r"^(unix|tcp)://.+")
    docker_cert_path: str = ""  # ca.pem, cert.pem, key.pem of a tcp:// host
    max_concurrent_trials: PositiveInt = 8


class HarborAgent(Section):
    agent_name: str = "claude-code"
    agent_import_path: str = "harbor_patch.agents.image_mounted_claude_code:ClaudeCode"
    runtime_image: str = "verl-swe-rl/agent-runtime:latest"
    runtime_mount_path: str = Field(default="/opt/custom-agent-runtime/claude-code", pattern=r"^/")
    runtime_image_subpath: str = "opt/custom-agent-runtime/claude-code"
    max_iterations: PositiveInt = 100
    max_timeout_sec: Seconds = 2400
    override_timeout_sec: Seconds = 2400
    disable_tool_calls: bool = False
    temperature: float = Field(default=1.0, ge=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    verifier_enabled: bool = True
    pod_name_prefix: str = Field(
        default="swe-lego-live-rl", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40
    )
    agent_setup_timeout_multiplier: Multiplier = 1.0
    agent_timeout_multiplier: Multiplier = 1.0
    verifier_timeout_multiplier: Multiplier = 1.0
    environment_build_timeout_multiplier: Multiplier = 1.0
    environment_type: Literal["docker"] | None = None
    environment_import_path: str = Field(
        default="harbor_patch.environments.remote_docker:RemoteDockerEnvironment",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    )
    # false: a trial starts from its task's content-tagged image when the host has it (hvt
    # sandbox warm), else builds and tags it; true: every trial builds (BuildKit's cache applies)
    environment_force_build: bool = False
    environment_delete: bool = True
    environment_override_cpus: PositiveInt = 1
    environment_override_memory_mb: Annotated[int, Field(ge=256)] = 8192
    max_consecutive_no_tool: int = Field(default=0, ge=0)
    host_path_mounts: list[HostPathMount] | None = None
    docker_host: str = Field(default="", pattern=r"^$|^(unix|tcp|ssh)://.+")
    docker_cert_path: str = ""
    # a fleet instead of one docker_host: trials spread over the healthy hosts (least loaded)
    docker_hosts: list[DockerHost] | None = None
    host_failure_threshold: PositiveInt = 3  # setups failing in a row that take a host out
    allow_insecure_test_network: bool = False
    # what a sandbox may reach (harbor_patch.trial_network): the proxy only, the task's own
    # policy, or everything; the verifier gets no network unless the task asks (not for public)
    sandbox_network: Literal["proxy-only", "task", "public"] = "proxy-only"

    @property
    def backend(self) -> Literal["docker", "remote_docker", "kubernetes"]:
        if "kubernetes" in self.environment_import_path.lower():
            return "kubernetes"
        if self.docker_host.startswith(("tcp://", "ssh://")):
            return "remote_docker"
        return "docker"


class HarborRuntime(Section):
    num_workers: PositiveInt = 16
    tail_kill_target: float = Field(default=1.0, gt=0, le=1)
    tail_kill_grace_sec: Seconds = 180
    tail_kill_min_tasks: Annotated[int, Field(ge=0)] = 32
    # verl_patch.infra_failure / infra_sampler: the step stops above this fraction
    max_infra_failure_fraction: float = Field(default=0.25, ge=0, le=1)


class Experiment(Section):
    project_name: str = Field(default="swe-lego-live-rl", pattern=r"^[A-Za-z0-9][\w.-]*$")
    exp_name: str = Field(default="", pattern=r"^$|^[A-Za-z0-9][\w.-]*$")
    trials_dir: str = ""
    trajectory_logger_src: str = ""


class Credentials(Section):
    wandb_api_key: str = ""
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"


class Inputs(Section):
    model: Model
    data: Data
    infrastructure: Infrastructure = Infrastructure()
    environment: Environment = Environment()
    k8s: K8s = K8s()
    vllm: Vllm = Vllm()
    training: Training = Training()
    algorithm: Algorithm = Algorithm()
    harbor_agent: HarborAgent = HarborAgent()
    harbor_runtime: HarborRuntime = HarborRuntime()
    experiment: Experiment = Experiment()
    credentials: Credentials = Credentials()


class OutputEntry(BaseModel):
    """A hand-off entry: free-form, but a mapping (description, path, pattern, value, ...)."""

    model_config = ConfigDict(extra="allow")
    description: str | None = None
    path: str | None = None
    pattern: str | None = None
    value: Any = None


class RuntimeInfo(Section):
    input: Inputs
    output: dict[str, OutputEntry] = {}


class Dependency(Section):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: str = Field(alias="from")
    required: bool = False


class MetaInfo(Section):
    name: str = "rl"
    label: str = "RL Training"
    description: str = ""
    parent: str | None = None
    dependencies: dict[str, Dependency] = {}
    resources: dict[str, str] = {}


class RunConfig(Section):
    meta_info: MetaInfo
    runtime_info: RuntimeInfo

    @property
    def inputs(self) -> Inputs:
        return self.runtime_info.input
