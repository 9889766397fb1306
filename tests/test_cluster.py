"""cluster.yaml: a valid Ray autoscaler config whose documented commands work with this code.

Fast: nothing is launched. The search commands documented at the top of the file are parsed by
the real CLI parser, and the config is checked against the schema that `ray up` validates with.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import ray
import yaml
from launcher_config import BUCKET, PROVISIONING, SHIPPED_HOME, derive_launcher_config

from awd.data import dataset_spec
from search.options import build_parser, options_from_args
from spaces import SPACES

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
REQUIRED_KEYS = ("cluster_name", "provider", "available_node_types", "head_node_type",
                 "max_workers", "setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands")
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def worker_types(config) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items()
            if name != config["head_node_type"]}


def documented_search_args(text: str) -> list[list[str]]:
    """The arguments of every search command in the file's comments (ray exec and ray submit)."""
    found = re.findall(r"python -m search\.run ([^'\n]+)", text)
    found += re.findall(r"search/run\.py -- ([^'\n]+)", text)
    return [shlex.split(args) for args in found]


def commands(config: dict, key: str) -> str:
    return "\n".join(config.get(key) or [])


def mlflow_port(config: dict) -> int:
    head = commands(config, "head_start_ray_commands")
    server = re.search(r"mlflow server .*?--port[ =](\d+)", head, re.S)
    assert server, "the head does not start an MLflow server with an explicit --port"
    return int(server.group(1))


# --- structure ------------------------------------------------------------------------------
def test_cluster_yaml_parses_with_every_required_key(config):
    assert isinstance(config, dict)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    assert not missing, f"cluster.yaml lacks {missing}"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] and config["provider"]["availability_zone"]


def test_head_node_type_is_one_of_the_node_types(config):
    assert config["head_node_type"] in config["available_node_types"]


def test_every_node_type_has_a_node_config_and_resources(config):
    for name, node_type in config["available_node_types"].items():
        assert node_type.get("node_config", {}).get("InstanceType"), name
        assert isinstance(node_type.get("resources"), dict), name


def test_head_has_no_gpu_and_every_worker_type_declares_gpus(config, worker_types):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert worker_types, "no worker node type"
    for name, node_type in worker_types.items():
        assert node_type["resources"].get("GPU", 0) > 0, name
        assert node_type["resources"].get("CPU", 0) >= node_type["resources"]["GPU"], name


def test_worker_counts_fit_within_the_cluster_limit(config, worker_types):
    limit = config["max_workers"]
    for name, node_type in worker_types.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= limit, name
    assert sum(t["min_workers"] for t in worker_types.values()) <= limit


# --- commands -------------------------------------------------------------------------------
def test_head_starts_ray_on_port_6379_and_workers_join_it(config):
    head = commands(config, "head_start_ray_commands")
    assert re.search(r"ray start --head\b.*--port=6379\b", head, re.S)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = commands(config, "worker_start_ray_commands")
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert "--head" not in worker


def test_token_auth_is_on_everywhere_with_the_users_token(config):
    """Ray >= 2.59 token auth: the same token file on every node, the mode set explicitly."""
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    # The search driver (`ray exec`, a login shell) gets the same mode from ~/.bashrc.
    assert "export RAY_AUTH_MODE=token" in commands(config, "setup_commands")


def test_web_servers_listen_on_the_heads_loopback_and_no_secret_is_in_the_file(config):
    """MLflow (no authentication of its own) and Ray's dashboard are reached through SSH
    tunnels only; the Ray token is copied from the user's machine, never written here."""
    every = "\n".join(commands(config, key) for key in (
        "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands"))
    assert "0.0.0.0" not in every
    assert "--dashboard-host=127.0.0.1" in commands(config, "head_start_ray_commands")
    assert config["file_mounts"] == {"/home/ubuntu/.ray/auth_token": "~/.ray/auth_token"}
    text = CLUSTER_YAML.read_text().lower()
    assert not re.search(r"(password|secret|token)\s*[:=]\s*['\"]?[a-z0-9]{16,}", text)


def test_mlflow_server_runs_in_the_background_on_the_head(config):
    head = commands(config, "head_start_ray_commands")
    # loopback only: reached through `ray attach -p 5000`, never from the VPC, no password
    assert re.search(r"nohup mlflow server --host 127\.0\.0\.1 .*&", head, re.S)
    assert "--backend-store-uri sqlite:////home/ubuntu/mlflow/mlflow.db" in head
    assert "--artifacts-destination s3://" in head
    assert "mlflow server" not in commands(config, "worker_start_ray_commands")
    assert "mkdir -p /home/ubuntu/mlflow" in commands(config, "head_setup_commands")
    # and `ray up` waits until it answers, on the port the driver uses
    starts = config["head_start_ray_commands"]
    server = next(i for i, c in enumerate(starts) if "mlflow server" in c)
    assert "http://127.0.0.1:5000/health" in starts[server + 1]


def test_setup_installs_torch_ray_and_the_project(config):
    setup = commands(config, "setup_commands")
    assert "pip install torch" in setup
    assert re.search(r"pip install \"ray\[default\]==" + re.escape(ray.__version__), setup)
    assert "git clone" in setup and "pip install -e ~/awdsearch" in setup
    # torch first: the project's own torch requirement must not pull another build.
    assert setup.index("pip install torch") < setup.index("pip install -e ~/awdsearch")


def test_setup_fetches_both_datasets_into_one_data_dir(config):
    setup = commands(config, "setup_commands")
    fetched = re.findall(r"AWD_DATA_DIR=(\S+) python -m awd\.data (fetch [^\n;&|]+)", setup)
    assert len({folder for folder, _ in fetched}) == 1
    # Trials inherit AWD_DATA_DIR from the driver (search.tune.session.connect_ray): same path.
    assert f"export AWD_DATA_DIR={fetched[0][0]}" in setup
    from awd.data.__main__ import build_parser as data_cli

    parsed = [data_cli().parse_args(shlex.split(argv)) for _, argv in fetched]
    assert {dataset_spec(args.name).name for args in parsed} == {"ptb", "wikitext-2"}
    assert all(args.source is None and args.dest is None for args in parsed)


def test_every_value_to_change_is_marked(text):
    for key in ("region:", "availability_zone:", "ssh_private_key:", "InstanceType:",
                "ImageId:", "KeyName:", "Arn:"):
        lines = [ln for ln in text.splitlines() if ln.strip().startswith(key)]
        assert lines, key
        assert all("# CHANGE" in ln for ln in lines), key
    # Placeholders inside commands (repo URL, bucket): a CHANGE comment right above the item.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "CHANGE-" not in line or line.lstrip().startswith("#") or "# CHANGE" in line:
            continue
        start = i
        while not re.match(r"\s*(- |[\w./~-]+:)", lines[start]):  # back to the item's start
            start -= 1
        above = start - 1
        comments = []
        while lines[above].lstrip().startswith("#"):
            comments.append(lines[above])
            above -= 1
        assert any("CHANGE:" in c for c in comments), f"unmarked placeholder: {line.strip()}"


# --- the documented search commands ---------------------------------------------------------
def test_the_file_documents_the_cluster_lifecycle(text):
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    for command in ("ray up cluster.yaml", "ray attach cluster.yaml -p 5000",
                    "ray exec cluster.yaml 'cd awdsearch && python -m search.run",
                    "ray submit cluster.yaml", "ray dashboard cluster.yaml",
                    "ray down cluster.yaml"):
        assert command in header, command


def test_documented_search_commands_parse_with_the_real_cli(text, config):
    documented = documented_search_args(text)
    assert len(documented) >= 2
    parser = build_parser()
    for argv in documented:
        opts = options_from_args(parser.parse_args(argv))  # exits on an unknown flag
        assert opts.space in SPACES
        assert opts.address == "auto"
        assert opts.gpus_per_trial is not None and opts.gpus_per_trial > 0
        # An autoscaling cluster starts small: the default concurrency would be sized to it.
        assert opts.concurrency is not None and opts.concurrency > 1
        uri = urlparse(opts.tracking_uri)
        assert (uri.scheme, uri.hostname, uri.port) == ("http", "localhost", mlflow_port(config))
        # Trials on several nodes need one storage that all of them reach.
        assert opts.storage.startswith("s3://"), opts.storage


def test_documented_s3_storage_reaches_ray_as_a_uri(text):
    parser = build_parser()
    for argv in documented_search_args(text):
        opts = options_from_args(parser.parse_args(argv))
        assert str(opts.storage_path) == opts.storage


# --- what `ray up` itself checks ------------------------------------------------------------
def test_config_matches_the_autoscaler_schema(config):
    if not RAY_SCHEMA.is_file():
        pytest.skip(f"this Ray ({ray.__version__}) ships no autoscaler schema at {RAY_SCHEMA}")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))


def test_config_passes_ray_ups_own_preparation_and_validation(config):
    """What `ray up` runs before it calls AWS: defaults merged, then validated."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:  # a private module: may move between Ray versions
        pytest.skip(f"Ray's config preparation is not importable here: {e}")
    pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["max_workers"] == 0
    assert prepared["worker_setup_commands"][:len(config["setup_commands"])] == \
        config["setup_commands"]


def test_the_launcher_tests_config_is_cluster_yaml_less_provider_paths_and_installs(config):
    """tests/test_launcher.py runs `ray up` with this derivation: every command as shipped but
    for paths, the data's `--from` and the software installs its hosts' image already has."""
    home, shared, repo, data = Path("/h"), Path("/shared"), Path("/repo"), Path("/data")
    derived, left_out = derive_launcher_config(
        config, name="t", head_ip="10.0.0.1", worker_ip="10.0.0.2", key=Path("/k"),
        token=Path("/tok"), home=home, shared=shared, repo=repo, data=data)
    commands = [k for k in config if k.endswith("_commands")]

    def moved(command: str) -> str:
        command = command.replace(SHIPPED_HOME, str(home)).replace(BUCKET, str(shared))
        return command.replace("https://github.com/CHANGE-OWNER/awdsearch.git", str(repo))

    installs = [moved(c) for key in commands for c in config[key] if PROVISIONING.search(c)]
    assert left_out and sorted(left_out) == sorted(installs)
    assert all(re.search(r"\b(apt-get|pip install)\b", c) for c in left_out)
    for key in commands:
        kept = [moved(c) for c in config[key] if not PROVISIONING.search(c)]
        assert [re.sub(r" --from \S+", "", c) for c in derived[key]] == kept, key
    fetches = [c for key in commands for c in derived[key] if "awd.data fetch" in c]
    assert len(fetches) >= 2 and all(re.search(r"--from /data/\S+$", c) for c in fetches)
    assert any(f"git clone {repo} ~/awdsearch" in c for c in derived["setup_commands"])
    replaced = {"cluster_name", "provider", "auth", "file_mounts", "available_node_types",
                "head_node_type"}
    for key in set(config) - replaced - set(commands):
        assert derived[key] == config[key], key
    assert set(config) - set(derived) == {"available_node_types", "head_node_type"}
    assert derived["file_mounts"] == {f"{home}/.ray/auth_token": "/tok"}
