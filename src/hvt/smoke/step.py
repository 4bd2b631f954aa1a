"""One real rollout step on the CPU: the link-by-link check behind `make smoke`.

Runs in the trainer container under `hvt launch --cpu-smoke` (Ray is up; discovery is
watching; the litellm service waits for its config):

 1. make the tiny model and index the smoke tasks (config/smoke-tasks) into parquet;
 2. serve the model from Ray actors `vllm_server_{i}_0` (discovery writes the LiteLLM config,
    the proxy starts) and wait until the proxy serves the model name with the master key;
 3. run Harbor trials: real claude-code from the agent-runtime image against the proxy, in
    sandboxes on the local Docker engine and on the TLS-only remote daemon, plus one trial by
    Harbor's oracle agent (reward 1 must come through);
 4. check every trajectory line parses and carries the sampled token ids, build the agent
    loop's outputs (verl's AgentLoopOutput, exact tokens), and compute verl's own GRPO
    advantages and GSPO loss on them;
 5. print a summary (counts, timings) and exit non-zero on any broken link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hvt.config.bundle import bundle_root
from hvt.config.load import load
from hvt.config.model import RunConfig
from hvt.images import base_images
from hvt.proxy import master_key
from hvt.smoke import policy as smoke_policy

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
REMOTE_ENV = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
PROXY_WAIT_S = 600.0


class SmokeFailure(Exception):
    """A broken link in the chain; the message names it."""


@dataclass
class Link:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class Report:
    links: list[Link] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str, seconds: float = 0.0) -> None:
        self.links.append(Link(name, ok, detail, seconds))
        mark = "[green]ok[/]" if ok else "[bold red]BROKEN[/]"
        console.print(f"[smoke] {mark} {name}: {detail} ({seconds:.1f} s)")

    @property
    def ok(self) -> bool:
        return all(link.ok for link in self.links)


def default_gateway() -> str:
    """This container's default gateway: the host's address on the compose network, where the
    published proxy port answers for sandboxes on this engine and on the nested TLS daemon."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(parts[2], 16)))
    raise SmokeFailure("no default route in this container (needed for the sandboxes' proxy URL)")


def prepare_inputs(cfg: RunConfig) -> tuple[Path, list[dict[str, Any]]]:
    """The tiny model and the parquet indexes of the smoke tasks."""
    from hvt.run import tasks_index

    model = smoke_policy.make_tiny_model(Path(cfg.inputs.model.model_path))
    data = Path(cfg.inputs.data.data_dir)
    tasks = bundle_root() / "config" / "smoke-tasks"
    entries = tasks_index.discover(tasks)
    train = tasks_index.rows(entries, split="train")
    tasks_index.write_parquet(train, data / cfg.inputs.data.train_index)
    tasks_index.write_parquet(
        tasks_index.rows(entries, split="val"), data / cfg.inputs.data.val_index
    )
    return model, train


def wait_for_proxy(base: str, key: str, served: str, timeout: float = PROXY_WAIT_S) -> float:
    """Seconds until the proxy lists the served model for a request with the master key."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        try:
            req = urllib.request.Request(
                f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                names = {m.get("id") for m in json.load(resp).get("data", [])}
            if served in names:
                return time.monotonic() - started
            last = f"models {sorted(n for n in names if n)}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        if int(time.monotonic() - started) % 15 == 0:
            console.print(f"[smoke] waiting for the proxy at {base} ({last})")
        time.sleep(1)
    raise SmokeFailure(
        f"the proxy at {base} did not serve {served!r} within {timeout:.0f} s "
        f"({last}); see `docker compose logs litellm`"
    )


def unauthenticated_status(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def load_images_into(remote_host: str, cert_dir: Path, images: list[str]) -> float:
    """Copy images from this engine to the remote daemon (no registry between them)."""
    import docker

    from hvt.docker_remote import connect

    missing = [f for f in ("ca.pem", "cert.pem", "key.pem") if not (cert_dir / f).is_file()]
    if missing:
        raise SmokeFailure(
            f"{', '.join(missing)} missing in {cert_dir} "
            "(harbor_agent.docker_cert_path; the smoke-certs service writes them)"
        )
    started = time.monotonic()
    local = docker.from_env(timeout=600)
    remote = connect(remote_host, cert_dir, timeout=600)
    present = {t for img in remote.images.list() for t in img.tags}
    for name in images:
        if name in present:
            continue
        console.print(f"[smoke] loading {name} into {remote_host}")
        remote.images.load(local.images.get(name).save(named=True))
    return time.monotonic() - started


def base_image_overlay(base: str, directory: Path) -> tuple[Path, ...]:
    """A compose overlay passing `base` as the BASE_IMAGE build argument of every smoke task
    (their Dockerfiles: `ARG BASE_IMAGE=<pinned public image>`); none for an empty `base`."""
    if not base:
        return ()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker-compose-base-image.json"
    spec = {"services": {"main": {"build": {"args": {"BASE_IMAGE": base}}}}}
    path.write_text(json.dumps(spec, indent=2))
    return (path,)


def remote_variant(cfg: RunConfig, host: str, cert_dir: str) -> RunConfig:
    data = cfg.model_dump(by_alias=True)
    agent = data["runtime_info"]["input"]["harbor_agent"]
    agent.update(docker_host=host, docker_cert_path=cert_dir, environment_import_path=REMOTE_ENV)
    return RunConfig.model_validate(data)


def verl_math(samples: list[Any], groups: list[str], config: RunConfig) -> dict[str, Any]:
    """verl's GRPO advantages and GSPO loss on the samples' exact tokens and logprobs."""
    import numpy as np
    import torch
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_policy_loss_fn
    from verl.workers.config import FSDPActorConfig

    width = max(len(s.response_ids) for s in samples)
    mask = torch.zeros(len(samples), width)
    rewards = torch.zeros(len(samples), width)
    logprobs = torch.zeros(len(samples), width)
    for row, s in enumerate(samples):
        n = len(s.response_ids)
        mask[row, :n] = torch.tensor(s.response_mask, dtype=torch.float32)
        logprobs[row, :n] = torch.tensor(s.response_logprobs, dtype=torch.float32)
        valid = [i for i, m in enumerate(s.response_mask) if m] or [n - 1]
        rewards[row, valid[-1]] = s.reward
    advantages, _ = compute_grpo_outcome_advantage(rewards, mask, np.array(groups))
    a = config.inputs.algorithm
    actor = FSDPActorConfig(
        strategy="fsdp",
        ppo_mini_batch_size=len(samples),
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=1,
        clip_ratio_low=a.clip_ratio_low,
        clip_ratio_high=a.clip_ratio_high,
    )
    loss_fn = get_policy_loss_fn("gspo")
    # the rollout's own logprobs as the old policy; the current policy a small step away
    current = logprobs + 0.01 * mask
    loss, metrics = loss_fn(
        old_log_prob=logprobs,
        log_prob=current,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="seq-mean-token-mean",
        config=actor,
    )
    return {
        "advantages": [
            round(float(advantages[r][mask[r] > 0].mean()), 4) if mask[r].sum() else 0.0
            for r in range(len(samples))
        ],
        "gspo_loss": float(loss),
        "ppo_kl": metrics.get("actor/ppo_kl"),
        "finite": bool(torch.isfinite(advantages).all() and torch.isfinite(loss)),
    }


@dataclass
class Planned:
    label: str
    backend: str
    agent: str
    row: dict[str, Any]
    settings: Any
    group: str


async def run_trials(planned: list[Planned], step_dir: str, workers: int) -> list[Any]:
    from verl_patch import harbor_trial

    gate = asyncio.Semaphore(workers)

    async def one(p: Planned) -> Any:
        async with gate:
            console.print(f"[smoke] trial {p.label}: {p.agent} on {p.backend}")
            return await harbor_trial.run_rollout(
                p.settings, p.row["extra_info"]["harbor_task_path"], step_dir, group=p.group
            )

    return list(await asyncio.gather(*(one(p) for p in planned)))


def check_trajectory(trial_dir: Path) -> tuple[int, int, str]:
    """(lines, lines with sampled token ids, problem or '') of a trial's trajectory file."""
    path = trial_dir / "agent" / "litellm-trajectory.jsonl"
    if not path.is_file():
        return 0, 0, f"{path} is missing"
    lines = with_ids = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(raw)
        except ValueError:
            return lines, with_ids, f"{path}:{number} is not a whole JSON line"
        lines += 1
        text = json.dumps(record)
        if '"token_ids"' in text or '"completion_token_ids"' in text:
            with_ids += 1
    return lines, with_ids, "" if lines else f"{path} is empty"


def run(config_file: Path, exp: str) -> int:
    report = Report()
    started = time.monotonic()
    cfg = load(config_file)
    i = cfg.inputs
    internal = os.environ.get(
        "HVT_PROXY_INTERNAL_URL", f"http://127.0.0.1:{i.infrastructure.litellm_port}"
    )
    remote_host = os.environ.get("HVT_SMOKE_REMOTE_DOCKER", "")
    cert_dir = Path(i.harbor_agent.docker_cert_path or os.environ.get("DOCKER_CERT_PATH", ""))
    os.environ["HVT_PROXY_URL"] = f"http://{default_gateway()}:{i.infrastructure.litellm_port}"
    try:
        t0 = time.monotonic()
        model, rows = prepare_inputs(cfg)
        report.add(
            "inputs",
            True,
            f"tiny model at {model}; {len(rows)} tasks indexed",
            time.monotonic() - t0,
        )

        import ray

        t0 = time.monotonic()
        ray.init(
            address=os.environ.get("RAY_ADDRESS", "auto"),
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        gpus = i.infrastructure.nnodes * i.infrastructure.ngpus_per_node
        replicas = smoke_policy.start_replicas(
            gpus // i.vllm.gen_tp, model, i.model.served_model_name
        )
        report.add(
            "replicas",
            True,
            f"{len(replicas)} CPU replicas named vllm_server_<i>_0",
            time.monotonic() - t0,
        )

        try:
            key = master_key.resolve(os.environ)
        except master_key.MasterKeyError as exc:
            raise SmokeFailure(str(exc)) from None
        waited = wait_for_proxy(internal, key, i.model.served_model_name)
        report.add(
            "discovery+proxy", True, f"{internal} serves {i.model.served_model_name!r}", waited
        )
        status = unauthenticated_status(internal)
        report.add("proxy auth", status in (401, 403), f"a request without the key got {status}")

        from verl_patch.rollout_settings import RolloutSettings

        trials_dir = os.environ.get("HVT_TRIALS_DIR")
        # the tasks' base image hvt smoke chose (public pinned, or the offline stand-in)
        base = os.environ.get("HVT_TASK_BASE_IMAGE", "")
        base_overlay = base_image_overlay(base, Path(tempfile.mkdtemp(prefix="hvt-smoke-")))
        local = RolloutSettings.from_run_config(cfg, trials_dir=trials_dir)
        local = replace(local, max_retries=0, extra_compose=(*local.extra_compose, *base_overlay))
        report.add(
            "task base image",
            True,
            base or "the tasks' Dockerfile default (python:3.12-slim-bookworm, pinned)",
        )
        planned = [
            Planned(
                f"{row['extra_info']['instance_id']}#{n}",
                "local docker",
                "claude-code",
                row,
                local,
                row["extra_info"]["instance_id"],
            )
            for row in rows
            for n in range(i.training.n_resp_per_prompt)
        ]
        oracle = replace(local, agent_name="oracle", agent_import_path=None, agent_kwargs={})
        # in the same group as claude-code's tries of that task: GRPO sees rewards 1 and 0
        planned.append(
            Planned(
                f"{rows[-1]['extra_info']['instance_id']}#oracle",
                "local docker",
                "oracle",
                rows[-1],
                oracle,
                rows[-1]["extra_info"]["instance_id"],
            )
        )
        if remote_host:
            t0 = time.monotonic()
            # a stand-in exists only here: copy it; the daemon pulls a public base itself
            images = [i.harbor_agent.runtime_image]
            images += [base] if base and base_images.is_stand_in(base) else []
            load_images_into(remote_host, cert_dir, images)
            report.add(
                "remote images",
                True,
                f"{', '.join(images)} on {remote_host}",
                time.monotonic() - t0,
            )
            remote_cfg = remote_variant(cfg, remote_host, str(cert_dir))
            remote = RolloutSettings.from_run_config(remote_cfg, trials_dir=trials_dir)
            remote = replace(
                remote, max_retries=0, extra_compose=(*remote.extra_compose, *base_overlay)
            )
            planned.append(
                Planned(
                    f"{rows[0]['extra_info']['instance_id']}#remote",
                    f"remote TLS {remote_host}",
                    "claude-code",
                    rows[0],
                    remote,
                    rows[0]["extra_info"]["instance_id"],
                )
            )
        t0 = time.monotonic()
        results = asyncio.run(run_trials(planned, "step_0000", i.harbor_runtime.num_workers))
        report.add("trials", True, f"{len(results)} Harbor trials finished", time.monotonic() - t0)

        samples, groups, table_rows = build_outputs(planned, results, model, cfg, report)
        math = verl_math(samples, groups, cfg)
        report.add(
            "verl GRPO + GSPO",
            math["finite"],
            f"advantages {math['advantages']}, gspo loss {math['gspo_loss']:.4f}",
        )
        print_summary(table_rows, math, time.monotonic() - started)
        summary = {
            "links": [link.__dict__ for link in report.links],
            "trials": table_rows,
            "verl": math,
            "seconds": round(time.monotonic() - started, 1),
            "exp": exp,
        }
        if trials_dir:
            out = Path(trials_dir) / "smoke-summary.json"
            out.write_text(json.dumps(summary, indent=2, default=str))
            console.print(f"[smoke] summary written to {out}")
    except SmokeFailure as exc:
        report.add("chain", False, str(exc))
    verdict = "PASSED" if report.ok else "FAILED"
    console.print(f"[bold]smoke {verdict}[/] in {time.monotonic() - started:.0f} s")
    return 0 if report.ok else 1


def build_outputs(
    planned: list[Planned], results: list[Any], model: Path, cfg: RunConfig, report: Report
) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    from transformers import AutoTokenizer

    from verl_patch.agent_loop import HarborAgentLoop
    from verl_patch.rollout_sample import build_sample

    tokenizer = AutoTokenizer.from_pretrained(model)

    def render(
        messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool
    ) -> list[int]:
        ids: Any = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=gen, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    t = cfg.inputs.training
    samples, groups, rows = [], [], []
    for p, result in zip(planned, results, strict=True):
        sample = build_sample(
            result,
            render=render,
            messages=p.row["prompt"],
            max_prompt=t.max_prompt_length,
            max_response=t.max_response_length,
            eos_id=int(tokenizer.eos_token_id),
        )
        output = HarborAgentLoop._output(sample)
        final = result.final
        lines, with_ids, problem = (
            check_trajectory(final.trial_dir) if p.agent != "oracle" else (0, 0, "")
        )
        exact = bool(sample.metrics.get("tokens_exact"))
        rows.append(
            {
                "trial": p.label,
                "backend": p.backend,
                "agent": p.agent,
                "termination": sample.termination.value,
                "reward": sample.reward,
                "model_calls": int(sample.metrics.get("model_calls", 0)),
                "trajectory_lines": lines,
                "lines_with_token_ids": with_ids,
                "exact_tokens": exact,
                "prompt_tokens": len(output.prompt_ids),
                "response_tokens": len(output.response_ids),
                "seconds": round(result.wall_sec, 1),
                "trial_dir": str(final.trial_dir),
            }
        )
        if p.agent == "oracle":
            report.add(
                f"reward 1 ({p.label})",
                sample.reward == 1.0,
                f"oracle reward {sample.reward}",
                result.wall_sec,
            )
        else:
            ok = not problem and lines > 0 and with_ids == lines and exact
            detail = problem or (
                f"{lines} trajectory lines, all with token ids; "
                f"{sample.termination.value}, reward {sample.reward}"
            )
            if not problem and not exact:
                detail += "; tokens were NOT exact (template fallback)"
            report.add(f"trial {p.label}", ok, detail, result.wall_sec)
        samples.append(sample)
        groups.append(p.group)
    zero = [s for s, p in zip(samples, planned, strict=True) if p.agent != "oracle"]
    report.add(
        "reward 0 reaches the output",
        any(s.reward == 0.0 for s in zero),
        f"claude-code rewards {[s.reward for s in zero]}",
    )
    return samples, groups, rows


def print_summary(rows: list[dict[str, Any]], math: dict[str, Any], seconds: float) -> None:
    table = Table(title=f"smoke step ({seconds:.0f} s)")
    for col in (
        "trial",
        "backend",
        "agent",
        "termination",
        "reward",
        "model calls",
        "traj lines",
        "with ids",
        "exact",
        "prompt/resp tokens",
        "s",
        "advantage",
    ):
        table.add_column(col)
    for row, adv in zip(rows, math["advantages"], strict=True):
        table.add_row(
            row["trial"],
            row["backend"],
            row["agent"],
            row["termination"],
            f"{row['reward']:g}",
            str(row["model_calls"]),
            str(row["trajectory_lines"]),
            str(row["lines_with_token_ids"]),
            "yes" if row["exact_tokens"] else "no",
            f"{row['prompt_tokens']}/{row['response_tokens']}",
            f"{row['seconds']}",
            f"{adv:g}",
        )
    console.print(table)
    console.print(f"GSPO loss {math['gspo_loss']:.5f}, ppo_kl {math['ppo_kl']}")
