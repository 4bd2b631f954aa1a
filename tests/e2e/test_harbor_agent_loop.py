"""The verl glue in the trainer image: verl 0.9.1 instantiates `harbor_claude_code` from
src/verl_patch/config/agent_loop_config_cc.yaml (hydra, as its AgentLoopWorker does), and the
loop runs real Harbor trials (oracle agent, this machine's engine through the mounted socket)
under a real Ray actor coordinator, returning AgentLoopOutput that verl can tensorize.

The trainer image comes from the session fixture `images` (make repos image, built before the
first test that needs it; HVT_TRAINER_IMAGE names another image to run). The exact-token path
needs a policy behind the proxy: the smoke test covers it end to end, tests/unit covers the
assembly.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import filled_config
from tests.helpers.prerequisites import require_images

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TRAINER = os.environ.get("HVT_TRAINER_IMAGE", "")

SCRIPT = r"""
import asyncio, json, os
import hydra, ray
from omegaconf import OmegaConf
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
import verl, verl.experimental.agent_loop.agent_loop as al
from verl.utils.dataset.rl_dataset import RLHFDataset

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|\s+"), "isolated")
    words = open("/hvt/tasks/write-answer/instruction.md").read().split()
    words += open("/hvt/tasks/wrong-answer/instruction.md").read().split()
    corpus = ["<|im_start|>", "<|im_end|>", "\n", " ", "user", "assistant", *words]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|pad|>"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|pad|>",
                                 eos_token="<|im_end|>")
    hf.chat_template = CHATML
    return hf


async def one(cfg, registry, tok, row):
    loop = hydra.utils.instantiate(
        config=registry, trainer_config=al.DictConfigWrap(cfg), server_manager=None,
        tokenizer=tok, processor=None, hf_model_type=None, dataset_cls=RLHFDataset,
        data_config=al.DictConfigWrap(cfg.data), tools=al.ToolListWrap([]))
    out = await loop.run({"temperature": 1.0, "top_p": 1.0}, **row)
    tensors = out.as_dict()
    return {
        "type": type(loop).__name__,
        "reward": out.reward_score,
        "prompt_len": len(out.prompt_ids),
        "prompt_decoded": tok.decode(out.prompt_ids),
        "response_ids": out.response_ids,
        "response_mask": out.response_mask,
        "logprobs": out.response_logprobs,
        "rm_scores": tensors["rm_scores"].tolist(),
        "termination": out.extra_fields["hvt_termination"],
        "trial_dir": out.extra_fields["hvt_trial_dir"],
        "weight_versions": [out.extra_fields[k] for k in ("min_global_steps", "max_global_steps")],
        "info": out.extra_fields["reward_extra_info"],
        "eos": tok.eos_token_id,
    }


def start_ray():
    # Ray gives its raylet a fixed 30 s to register (ray/_private/node.py); on a loaded CI
    # machine that can pass: retry that one transient start-up error, twice at most.
    for attempt in range(3):
        try:
            return ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            print(f"ray start timed out under load (attempt {attempt + 1}); retrying", flush=True)
            ray.shutdown()


async def main():
    start_ray()
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    base = os.path.join(config_dir, "_generated_ppo_trainer.yaml")
    cfg = OmegaConf.load(base)
    (registry,) = OmegaConf.load("/hvt/src/verl_patch/config/agent_loop_config_cc.yaml")
    assert registry.name == "harbor_claude_code"
    tok = tokenizer()
    rows = []
    for i, (task, split) in enumerate([("write-answer", "train"), ("wrong-answer", "val")]):
        text = open(f"/hvt/tasks/{task}/instruction.md").read()
        rows.append({
            "raw_prompt": [{"role": "user", "content": text}],
            "extra_info": {"index": i, "instance_id": task, "split": split,
                           "harbor_task_path": f"/hvt/tasks/{task}"},
            "global_steps": 3, "index": i, "agent_name": "harbor_claude_code",
        })
    results = await asyncio.gather(*(one(cfg, registry, tok, r) for r in rows))
    import verl_patch.coordination as c
    from verl_patch.agent_loop import load_settings
    settings = load_settings(os.environ["HVT_CONFIG"], os.environ["HVT_TRIALS_DIR"])
    actor = ray.get_actor(c.actor_name(settings), namespace=c.NAMESPACE)
    snapshot = await actor.snapshot.remote("train:3")
    print("RESULT " + json.dumps({"rollouts": results, "coordinator": snapshot}))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def trainer_image(images: dict[str, str]) -> str:
    if TRAINER:
        require_images(TRAINER, remedy="HVT_TRAINER_IMAGE names it")
        return TRAINER
    return images["trainer"]


def test_agent_loop_in_the_trainer_image(tmp_path: Path, trainer_image: str) -> None:
    prefix = f"hvt-e2e-al-{uuid.uuid4().hex[:6]}"
    trials = tmp_path / "trials" / "proj" / "exp"
    trials.mkdir(parents=True)
    os.chmod(tmp_path / "trials", 0o777)
    for d in (tmp_path / "trials" / "proj", trials):
        os.chmod(d, 0o777)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            filled_config(
                **{
                    "runtime_info.input.harbor_agent.agent_name": "oracle",
                    "runtime_info.input.harbor_agent.agent_import_path": "",
                    "runtime_info.input.harbor_agent.runtime_image": "",
                    "runtime_info.input.harbor_agent.sandbox_network": "public",  # no model
                    "runtime_info.input.harbor_agent.pod_name_prefix": prefix,
                    "runtime_info.input.harbor_agent.environment_override_memory_mb": 512,
                    "runtime_info.input.harbor_runtime.num_workers": 2,
                }
            )
        )
    )
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    command = [
        "docker", "run", "--rm", "--network", "host",
        "--group-add", str(socket_gid),
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{ROOT / 'src'}:/hvt/src:ro",
        "-v", f"{ROOT / 'tests' / 'fixtures' / 'tasks'}:/hvt/tasks:ro",
        "-v", f"{config}:/hvt/run/config.yaml:ro",
        "-v", f"{ROOT / 'config' / 'algorithms'}:/hvt/run/algorithms:ro",
        "-v", f"{tmp_path / 'trials'}:{tmp_path / 'trials'}",
        "-e", "PYTHONPATH=/hvt/src",
        "-e", "HVT_CONFIG=/hvt/run/config.yaml",
        "-e", f"HVT_TRIALS_DIR={trials}",
        "-e", "LITELLM_LOCAL_MODEL_COST_MAP=True",
        "-e", "RAY_USAGE_STATS_ENABLED=0",
        "--entrypoint", "/opt/venv/bin/python",
        trainer_image, "-c", SCRIPT,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    train, val = result["rollouts"]
    assert train["type"] == "HarborAgentLoop"
    assert (train["reward"], val["reward"]) == (1.0, 0.0)
    for rollout in (train, val):
        assert rollout["termination"] == "agent_completed"
        # the oracle calls no model: nothing to train, the task prompt and one masked token
        assert rollout["response_ids"] == [rollout["eos"]] and rollout["response_mask"] == [0]
        assert rollout["logprobs"] == [0.0]
        assert rollout["rm_scores"] == [rollout["reward"]]
        assert rollout["prompt_decoded"].split()[-2:] == ["<|im_start|>", "assistant"]
        assert rollout["info"]["termination/agent_completed"] == 1.0
        assert rollout["info"]["trainable"] == 0.0
        # verl's v1 trainer reads the serving weight version from every output: step 3's
        # trials are served by the weights of step 2 in sync mode
        assert rollout["weight_versions"] == [2, 2]
    assert Path(train["trial_dir"]).parent == trials / "step_0003"
    assert Path(val["trial_dir"]).parent == trials / "val_step_0003"
    (line,) = (trials / "step_0003" / "rollouts.jsonl").read_text().splitlines()
    assert json.loads(line)["instance_id"] == "write-answer"
    assert result["coordinator"]["done"] == 1 and result["coordinator"]["slots_in_use"] == 0
