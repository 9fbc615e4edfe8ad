"""The CoreLayer build (layers/core/Makefile) drops only what the Lambda runtime has or the code never imports."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import phonenumbers
import pytest
from packaging.requirements import Requirement

import reachable_modules
from sms_gateway_tools.layer import LAYER_DIR as LAYER
from sms_gateway_tools.layer import (
    copy_shipped_packages,
    distribution_closure,
    distributions_of,
    layer_requirements,
    makefile_list,
    shipped_packages,
    site_packages,
)

REPO = LAYER.parent.parent
HANDLERS = sorted(REPO.glob("functions/*/app.py"))
# What a test here may take on a loaded CI machine. pytest-timeout counts wall-clock time, a module fixture's setup
# charged to the first test asking for it; on 2 cores shared with 2 CPU burners and other test runs the `shipped`
# fixture's build steps took 65 s (its first test 73 s in all), the child pytest run 56 s, each closure test 40-45 s:
# pyproject's 120 s a test is overrun by a machine half again as busy, and the run is red for no fault of the build.
LOADED_MACHINE_SECONDS = 600
pytestmark = pytest.mark.timeout(LOADED_MACHINE_SECONDS)


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


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's copies of the layer's third-party packages, sources only (as pip installs them for the build),
    put through the build's steps (sms_gateway_tools.layer.copy_shipped_packages): the modules no import reaches
    deleted, the rest compiled to bytecode without their sources."""
    directory = tmp_path_factory.mktemp("layer")
    copy_shipped_packages(directory)
    return directory


def untrimmed_modules() -> dict[str, Path]:
    """Every module of the packages the layer ships, as installed here (sources), and of the gateway's package."""
    site = site_packages()
    modules = reachable_modules.module_files(LAYER / "sms_gateway", "sms_gateway")
    for name in shipped_packages():
        if (site / name).is_dir():
            modules.update(reachable_modules.module_files(site / name, name))
        elif (site / f"{name}.py").is_file():
            modules[name] = site / f"{name}.py"
    return modules


def trimmed_packages_modules(directory: Path) -> set[str]:
    """The modules of the trimmed packages under `directory` (bytecode and extensions)."""
    trimmed = makefile_list("TRIMMED_TO_REACHABLE")
    found = reachable_modules.module_files(directory, suffixes=(".pyc", ".so"))
    return {name for name in found if name.split(".")[0] in trimmed}


def removed_modules(shipped: Path) -> set[str]:
    trimmed = makefile_list("TRIMMED_TO_REACHABLE")
    installed = {name for name in untrimmed_modules() if name.split(".")[0] in trimmed}
    return installed - trimmed_packages_modules(shipped)


def test_the_build_starts_its_closure_from_what_the_handlers_import() -> None:
    # Given every module the layer ships, and the handlers' own files (which the build cannot see)
    modules = untrimmed_modules()
    handlers = {f"functions.{path.parent.name}.app": path for path in HANDLERS}
    gateway = [name for name in modules if name.startswith("sms_gateway")]
    # When the closure starts from the gateway and the handlers' files, and from the gateway and HANDLER_IMPORTS
    from_files = reachable_modules.closure([*gateway, *handlers], {**modules, **handlers}) - handlers.keys()
    from_list = reachable_modules.closure([*gateway, *makefile_list("HANDLER_IMPORTS")], modules)
    # Then both reach the same modules: the list names all the handlers import, and nothing more
    assert from_list == from_files
    assert "aws_lambda_powertools.logging.correlation_paths" in from_list


def test_every_dynamic_import_the_closure_meets_is_reviewed() -> None:
    # Given the closure over this machine's packages, from the gateway and the handlers' imports
    modules = untrimmed_modules()
    gateway = [name for name in modules if name.startswith("sms_gateway")]
    reached = reachable_modules.closure([*gateway, *makefile_list("HANDLER_IMPORTS")], modules)
    # Then every dynamic import given a name made at run time is one REVIEWED says where its names come from (the
    # build deletes nothing otherwise): a new version of a package with a new one fails here first
    assert reachable_modules.unreviewed_dynamic_imports(reached, modules) == []
    # And each reviewed module still has one (no review outlives the code it was about)
    for name in reachable_modules.REVIEWED:
        assert name in reached, f"{name} is reviewed but no longer reached"
        assert reachable_modules.dynamic_imports(ast.parse(modules[name].read_bytes())), name
    # And the gateway declares no field whose value pydantic would import (ImportString, v1's PyObject)
    sources = "\n".join(path.read_text() for path in (LAYER / "sms_gateway").rglob("*.py"))
    assert "ImportString" not in sources
    assert "PyObject" not in sources


def imported_names(path: Path, package: str) -> set[str]:
    """Every module an import statement anywhere in the file names (`from a import b`: `a` and `a.b`), and every
    string constant (what a lazy import is given), for the check below; written apart from the closure's rules."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.update([source, *(f"{source}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value.split(":")[0])
    return names


def test_no_kept_module_imports_a_module_the_build_removed(shipped: Path) -> None:
    # Given what the build removed from the trimmed packages, here: whole utilities the gateway never uses
    removed = removed_modules(shipped)
    assert {"aws_lambda_powertools.utilities.idempotency", "aws_lambda_powertools.utilities.kafka"} <= removed
    # Then no import statement anywhere in the code kept (the trimmed packages' modules left, the gateway's, the
    # handlers'), nor a string constant in it, names a removed module
    modules = untrimmed_modules()
    kept = trimmed_packages_modules(shipped) | {name for name in modules if name.startswith("sms_gateway")}
    files = {name: modules[name] for name in kept if modules[name].suffix == ".py"}
    files.update({f"functions.{path.parent.name}.app": path for path in HANDLERS})
    found = {
        f"{name} -> {module}"
        for name, path in files.items()
        for module in imported_names(path, name if path.stem == "__init__" else name.rpartition(".")[0])
        if module in removed
    }
    assert sorted(found) == []
    # And what the handlers use is kept: the batch processors, the event parser's models they type with, Logger
    assert {"aws_lambda_powertools.utilities.batch", "aws_lambda_powertools.utilities.parser.models.sqs"} <= kept


def test_every_module_kept_in_the_trimmed_packages_imports(shipped: Path) -> None:
    # Given every module left in the trimmed packages
    kept = sorted(trimmed_packages_modules(shipped))
    removed = sorted(removed_modules(shipped))
    script = (
        "import importlib, json, sys\n"
        "kept, removed = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))\n"
        "missing = []\n"
        "for name in kept:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        missing.append(f'{name}: {error.name}')\n"
        "    except Exception:\n"
        "        pass\n"
        "print(json.dumps([m for m in missing if m.split(': ')[1] in removed]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shipped), str(LAYER)]), "PYTHONDONTWRITEBYTECODE": "1"}
    # When each is imported on the trimmed layer (what a module runs at import: its module-level imports)
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(kept), json.dumps(removed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    # Then none needs a module the build removed
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.splitlines()[-1]) == []


# A test driving each function's handler on its events (events/), on moto: api, dispatcher, scheduled_dispatch,
# webhook, sweeper and notifier.
HANDLER_TESTS = [
    "tests/integration/test_send_path.py::test_dispatch_submits_once_even_when_the_record_comes_twice",
    "tests/integration/test_scheduled_release.py::test_the_schedule_releases_its_batch_into_the_dispatch_queue_once",
    "tests/integration/test_notifications_and_inbound_edges.py"
    "::test_an_inbound_sms_whose_notification_the_queue_refused_reaches_the_client_from_the_sweeper",
    "tests/integration/test_notify_receive_counts.py",
]
ORIGINS_PLUGIN = """
import os, sys
def pytest_sessionfinish(session, exitstatus):
    names = [name for name in sys.modules if name.split(".")[0] in {"pydantic", "aws_lambda_powertools"}]
    files = [getattr(sys.modules[name], "__file__", None) or "" for name in names]
    with open(os.environ["LAYER_ORIGINS"], "w") as out:
        out.write("\\n".join(files))
"""


def test_each_function_handles_its_events_on_the_trimmed_layer(shipped: Path, tmp_path: Path) -> None:
    # Given tests that run each function's handler on its sample events, with the trimmed layer first on sys.path
    (tmp_path / "layer_origins.py").write_text(ORIGINS_PLUGIN)
    origins = tmp_path / "origins.txt"
    path = [str(shipped), str(tmp_path), str(LAYER), str(REPO / "tools"), str(REPO)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAYER_ORIGINS": str(origins),
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    # When they run
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "layer_origins", *HANDLER_TESTS],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    # Then they pass, with Powertools and pydantic loaded from the trimmed layer's bytecode only
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "6 passed" in completed.stdout
    loaded = origins.read_text().splitlines()
    assert len(loaded) > 100
    assert [file for file in loaded if not file.startswith(str(shipped)) or not file.endswith(".pyc")] == []


def test_the_third_party_packages_ship_as_bytecode_that_imports_without_sources(shipped: Path) -> None:
    # Given the layer's third-party packages as the build ships them (the `shipped` fixture)
    assert {"pydantic", "aws_lambda_powertools", "httpx", "phonenumbers"} <= {path.name for path in shipped.iterdir()}
    # Then no source is left beside its bytecode
    assert [str(path) for path in shipped.rglob("*.py")] == []
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
        "PYTHONPATH": os.pathsep.join([str(shipped), str(LAYER)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "POWERTOOLS_TRACE_DISABLED": "false",
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, str(shipped)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "telco='mtn'" in completed.stdout
    loaded, not_bytecode = completed.stdout.splitlines()[-1].split(" ", 1)
    assert int(loaded) > 300
    assert not_bytecode == "[]"


def test_the_tests_doing_the_builds_work_have_the_time_a_loaded_machine_takes(request: pytest.FixtureRequest) -> None:
    # Given the timeout each test of this file runs under (its marker, else pyproject's for every test)
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker else float(request.config.getini("timeout"))
    # Then it leaves the build's steps and the child pytest run the time a loaded machine takes
    assert timeout >= LOADED_MACHINE_SECONDS
