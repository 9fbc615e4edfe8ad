"""The CoreLayer build (layers/core/Makefile) drops only what the Lambda runtime has or the code never imports."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import phonenumbers
from packaging.requirements import Requirement

from sms_gateway_tools.layer import LAYER_DIR as LAYER
from sms_gateway_tools.layer import (
    copy_shipped_packages,
    distribution_closure,
    distributions_of,
    layer_requirements,
    makefile_list,
)


def test_the_build_drops_only_what_the_lambda_runtime_already_has() -> None:
    # Given what the python3.13 runtime ships: boto3 and everything boto3 needs
    runtime = distribution_closure(Requirement("boto3"))
    # Then every package the build deletes from the layer is one of them, so nothing the requirements need goes
    # missing on Lambda (powertools' jmespath and the X-Ray SDK's botocore come from the runtime)
    for name in makefile_list("RUNTIME_PROVIDED"):
        assert distributions_of(name) <= runtime, f"{name} is deleted from the layer but the runtime lacks it"
    # And the requirements do rely on some of them, which is why the check matters
    needed = distribution_closure(*layer_requirements())
    assert {"botocore", "jmespath"} <= needed


def phonenumbers_modules_imported_by_the_code() -> set[str]:
    """Submodules of phonenumbers that sms_gateway imports (`import phonenumbers.x`, `from phonenumbers import x`)."""
    package = Path(phonenumbers.__file__).parent
    submodules = {path.stem for path in package.iterdir() if path.suffix == ".py" or path.is_dir()}
    used: set[str] = set()
    for source in (LAYER / "sms_gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("phonenumbers"):
                parts = node.module.split(".")[1:] + [alias.name for alias in node.names]
                used.update(part for part in parts if part in submodules)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("phonenumbers."):
                        used.add(alias.name.split(".")[1])
    return used


def test_no_phonenumbers_module_the_code_imports_is_deleted() -> None:
    # Given what the code imports from phonenumbers (carrier, at least)
    used = phonenumbers_modules_imported_by_the_code()
    assert "carrier" in used
    # Then the build keeps each of them, and the data they read
    unused = {Path(name).stem for name in makefile_list("PHONENUMBERS_UNUSED")}
    assert not used & unused
    assert {"carrierdata", "data"}.isdisjoint(unused)


def test_trimmed_phonenumbers_still_parses_numbers_and_finds_their_network(tmp_path: Path) -> None:
    # Given phonenumbers trimmed the way the Makefile trims it, first on sys.path
    trimmed = tmp_path / "phonenumbers"
    shutil.copytree(Path(phonenumbers.__file__).parent, trimmed, ignore=shutil.ignore_patterns("__pycache__"))
    for name in makefile_list("PHONENUMBERS_UNUSED"):
        target = trimmed / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    script = (
        "import importlib.util, phonenumbers, sys\n"
        "assert phonenumbers.__file__.startswith(sys.argv[1]), phonenumbers.__file__\n"
        "assert importlib.util.find_spec('phonenumbers.geocoder') is None\n"
        "from sms_gateway.domain.msisdn import parse_msisdn\n"
        "print(parse_msisdn('08031234567', 'NG'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(LAYER)])}
    # When the gateway parses a Nigerian mobile number with it
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, check=False
    )
    # Then it gets the number and its network (carrier data kept), with the geocoder gone
    assert completed.returncode == 0, completed.stderr
    assert "+2348031234567" in completed.stdout
    assert "telco='mtn'" in completed.stdout


def test_the_layer_ships_the_portals_static_assets(tmp_path: Path) -> None:
    # Given the build's own commands after the pip install (make -n prints them; installing needs the network)
    printed = subprocess.run(
        ["make", "-n", "-s", "build-CoreLayer", f"ARTIFACTS_DIR={tmp_path}"],
        cwd=LAYER,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    (tmp_path / "python").mkdir()
    for command in printed.splitlines():
        if "pip install" in command or "/phonenumbers" in command:
            continue
        subprocess.run(["bash", "-c", command], cwd=LAYER, check=True)
    # Then the portal's CSS and JS are in the layer next to the code that serves them
    assets = LAYER / "sms_gateway" / "dialects" / "portal" / "assets"
    shipped = tmp_path / "python" / "sms_gateway" / "dialects" / "portal" / "assets"
    assert {"portal.css", "portal.js"} <= {path.name for path in assets.iterdir()}
    assert sorted(path.name for path in shipped.iterdir()) == sorted(path.name for path in assets.iterdir())


def test_the_third_party_packages_ship_as_bytecode_that_imports_without_sources(tmp_path: Path) -> None:
    # Given this machine's copies of the layer's third-party packages, sources only (as pip installs them for the
    # build), put through the build's bytecode step (sms_gateway_tools.layer.copy_shipped_packages)
    shipped = copy_shipped_packages(tmp_path)
    assert {"pydantic", "aws_lambda_powertools", "httpx", "phonenumbers"} <= set(shipped)
    # Then no source is left beside its bytecode
    assert [str(path) for path in tmp_path.rglob("*.py")] == []
    # And every function's handler imports from the bytecode alone (X-Ray on, so its SDK is imported too), parses a
    # Nigerian number to its network and validates a model: nothing compiles at a cold start
    script = (
        "import importlib.util, sys\n"
        "for name in ('api', 'dispatcher', 'webhook', 'notifier', 'scheduled_dispatch', 'sweeper'):\n"
        "    spec = importlib.util.spec_from_file_location('app_' + name, f'functions/{name}/app.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "from sms_gateway.domain.msisdn import parse_msisdn\n"
        "from sms_gateway.domain.models import SendCommand\n"
        "print(parse_msisdn('08031234567', 'NG'))\n"
        "one = [{'msisdn': '+2348031234567'}]\n"
        "SendCommand.model_validate({'account_id': '1', 'sender': 'x', 'text': 'hi', 'recipients': one})\n"
        "layer = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]\n"
        "layer = [f for f in layer if f.startswith(sys.argv[1])]\n"
        "print(len(layer), [f for f in layer if not f.endswith(('.pyc', '.so'))])\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(LAYER)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "POWERTOOLS_TRACE_DISABLED": "false",
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        cwd=LAYER.parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "telco='mtn'" in completed.stdout
    loaded, not_bytecode = completed.stdout.splitlines()[-1].split(" ", 1)
    assert int(loaded) > 300
    assert not_bytecode == "[]"
