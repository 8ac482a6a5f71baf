"""Property tests: whatever a user writes in a prompt file, a --set or a config file, splat3d either
accepts it or says what is wrong in one sentence (a Splat3dError: exit 2, no traceback), and writes nothing."""

import json
import os
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from splat3d.apps.batch.jobs import JOB_KEYS, Job, read_jobs
from splat3d.errors import Splat3dError
from splat3d.run.config import RunConfig, _all_keys, build_config, from_yaml_text, to_yaml

KEYS = _all_keys(OmegaConf.structured(RunConfig))
# SPLAT3D_FUZZ_EXAMPLES=2000 for a long hunt; 100 each keeps the suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("SPLAT3D_FUZZ_EXAMPLES", 100)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Values a user might type: numbers, words, YAML and OmegaConf syntax (lists, maps, interpolations), junk.
scalar_text = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "null", "true", "no", "[1, 2]", "[[0, 64]]", "{a: 1}", "${steps}", "${oc.env:HOME}",
                     "${", "'quoted'", '"x', "- a", ": b", "1e400", "0x10", "~", "&a", "*a", "!!python/none"]),
    st.text(max_size=12),
)  # fmt: skip
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def single_sentence_or_success(call, user_text: str) -> None:
    """``call`` succeeds or raises Splat3dError: one line, unless the user's own text it quotes has line breaks."""
    try:
        call()
    except Splat3dError as e:
        message = str(e)
        assert message.strip() and "Traceback" not in message, repr(message)
        assert message.count("\n") <= user_text.count("\n"), repr(message)


def listing(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@FUZZ
@given(st.lists(st.one_of(
    st.text(max_size=20),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS) | st.text(string.ascii_letters + "._[]$", max_size=12),
              scalar_text),
), max_size=3))  # fmt: skip
def test_set_overrides(overrides):
    single_sentence_or_success(lambda: build_config(None, overrides, prompt__prompt="a red cube"), "".join(overrides))


@FUZZ
@given(st.one_of(
    st.text(max_size=60),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_value, max_size=4).map(yaml.safe_dump),
    st.dictionaries(st.sampled_from(KEYS).map(lambda k: k.split(".")[0]),
                    st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]), json_value, max_size=3),
                    max_size=3).map(yaml.safe_dump),
))  # fmt: skip
def test_config_files(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    before = listing(tmp_path)
    single_sentence_or_success(lambda: build_config(str(path), None, prompt__prompt="a red cube"), text)
    assert listing(tmp_path) == before


@FUZZ
@given(st.booleans(), st.lists(st.one_of(
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(JOB_KEYS) | st.text(max_size=6), json_value, max_size=4).map(json.dumps),
    st.fixed_dictionaries({"prompt": st.text(max_size=20)},
                          optional={k: json_value for k in JOB_KEYS if k != "prompt"}).map(json.dumps),
), max_size=5))  # fmt: skip
def test_prompt_files(tmp_path, jsonl, lines):
    path = tmp_path / ("prompts.jsonl" if jsonl else "prompts.txt")
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    before = listing(tmp_path)
    single_sentence_or_success(lambda: read_jobs(path, Job(prompt="")), "".join(lines))
    assert listing(tmp_path) == before


@FUZZ
@given(st.text(max_size=40) | st.sampled_from(["${steps}", "a \\${x}", "\\\\${seed}", "[red]x[/red]", "it's\na: b"]))
def test_prompts_are_kept_verbatim(prompt):
    """A prompt is text, never YAML or an OmegaConf interpolation; config.yaml gives it back unchanged."""
    try:
        cfg = build_config(None, None, prompt__prompt=prompt)
    except Splat3dError as e:
        assert not prompt.strip() and "prompt is empty" in str(e)
        return
    assert cfg.prompt.prompt == prompt
    assert from_yaml_text(to_yaml(cfg)) == cfg
