import sys
import pytest
from tests.integration.test_admin_cli import cli, account, other, API_URL  # noqa

ARGVS = [
    ["set-route", "--upstream", "simulator", "--account", "123"],
    ["set-route", "--upstream", "simulator", "--fallback", "simulator", "--network", "mtn"],
    ["set-route", "--upstream", "simulator", "--network", "nonet"],
    ["set-route", "--upstream", "simulator", "--account", "", "--network", "mtn"],
    ["show-routes"],
]

@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a)[:60])
def test_probe(cli, argv):
    try:
        code, out, err = cli(*argv)
    except SystemExit as e:
        sys.__stdout__.write("SYSTEMEXIT %s\n" % e.code); return
    sys.__stdout__.write(" ".join(map(str,("CODE", code, "ERR", err[:300], "OUT", str(out)[:300])))+"\n")
