"""The benchmarks' arithmetic: DynamoDB units from item sizes, and the floor docs/benchmarks-floor.md derives."""

from __future__ import annotations

import io
import zipfile

import pytest

from bench.bench_requests_per_message import floor
from bench.capacity import item_size, read_units, write_units
from tests.conftest import create_key_table

TEMPLATE_BATCHES = {"DispatcherFunction": 10, "NotifierFunction": 10}


def test_item_size_counts_names_and_values_as_dynamodb_does():
    # "pk" (2) + "abc" (3); "n" (1) + 12345 (3 significant-digit pairs: 3 bytes + 1)
    assert item_size({"pk": {"S": "abc"}}) == 5
    assert item_size({"n": {"N": "12345"}}) == 1 + 4
    # a map: 3 bytes + per entry its name, its value and 1 byte
    assert item_size({"m": {"M": {"a": {"BOOL": True}}}}) == 1 + 3 + (1 + 1 + 1)


def test_units_round_up_per_kilobyte_written_and_per_4_kb_read():
    assert write_units(0) == 1
    assert write_units(1024) == 1
    assert write_units(1025) == 2
    assert read_units(4096, consistent=True) == 1
    assert read_units(4097, consistent=True) == 2
    assert read_units(100, consistent=False) == 0.5


def test_the_floor_is_the_one_the_doc_derives():
    single = floor(1, TEMPLATE_BATCHES)
    assert single == pytest.approx({"accept": 5, "dispatch": 2.6, "dlr": 2, "notify": 0.51, "settle": 0.56})
    assert sum(single.values()) == pytest.approx(10.67)
    # A send of 1000: its accept's 44 requests and the write that takes it out of the sweep index (since 2026-12-07)
    assert floor(1000, TEMPLATE_BATCHES)["accept"] == pytest.approx(0.045)
    assert sum(floor(1000, TEMPLATE_BATCHES).values()) == pytest.approx(4.5837)


def test_a_transactional_write_is_billed_twice_a_plain_writes_units_by_the_size_of_its_item():
    import boto3
    from moto import mock_aws

    from bench import metering_boto3_clients
    from bench.capacity import CapacityMeter

    with mock_aws():
        probe = boto3.client("dynamodb", region_name="us-east-1")
        create_key_table(probe)
        # Given an account item of about 3 KB (a long webhook URL, KMS ciphertexts, many senders)
        key = {"pk": {"S": "ACC#1"}, "sk": {"S": "ACCOUNT"}}
        probe.put_item(TableName="t", Item={**key, "blob": {"S": "x" * 3000}, "credits": {"N": "100"}})
        meter = CapacityMeter(probe, "t")
        update = {
            "TableName": "t",
            "Key": key,
            "UpdateExpression": "SET credits = credits - :c",
            "ConditionExpression": "credits >= :c",
            "ExpressionAttributeValues": {":c": {"N": "1"}},
        }
        batch = {"TableName": "t", "Item": {"pk": {"S": "ACC#1"}, "sk": {"S": "BATCH#1"}, "cost": {"N": "1"}}}
        with metering_boto3_clients(meter):
            client = boto3.session.Session(region_name="us-east-1").client("dynamodb")
            client.update_item(**update)
            plain = meter.units["dynamodb:WRU"]
            # When the same update goes in a transaction, with a small new item beside it
            client.transact_write_items(TransactItems=[{"Update": update}, {"Put": batch}])
            transactional = meter.units["dynamodb:WRU"] - plain
    # Then the update is billed twice its 3 units, and the put twice its one
    assert plain == 3
    assert transactional == 2 * 3 + 2 * 1


@pytest.mark.parametrize(("sends", "recipients"), [(2, 1), (1, 12)], ids=["single sends", "a bulk send"])
def test_the_request_count_flow_takes_every_message_to_the_clients_webhook(sends, recipients):
    # The flow `make bench` counts requests and cost over: a single send's records are on the priority dispatch
    # queue, a bulk send's on the other (until 2026-12-06 the harness drained only the bulk queue, and the benchmark
    # failed with no delivery report reaching the webhook)
    from bench.bench_requests_per_message import run_flow

    flow = run_flow("flow", sends, recipients, capacity=False)
    # run_flow raises unless the client's webhook got every message's reports; the dispatcher was invoked for them
    assert flow.stages["dispatch"].invocations
    assert flow.stages["dispatch"].calls


def test_the_cold_start_harness_records_every_client_the_gateway_makes(monkeypatch):
    # The cold-start benchmark replaces the gateway's client factory in the measured process to record its requests
    # (bench/first_invocation.py). Until 2026-12-06 its replacement took no `prompt`, so every client asked for with
    # it failed: the api's first invocation answered 503 and the benchmark did not run.
    from bench.first_invocation import INVOKE_SCRIPT
    from sms_gateway.adapters import aws

    prefix, _ = INVOKE_SCRIPT.split("aws.client = recording_client")
    namespace: dict = {}
    exec(prefix, namespace)
    recording_client = namespace["recording_client"]
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    aws.reset_clients()
    try:
        for options in ({}, {"prompt": True}):
            assert recording_client("sqs", **options) is aws.client("sqs", **options)
    finally:
        aws.reset_clients()


def test_the_layer_size_counts_every_file_sam_deploy_ships(tmp_path):
    from bench.bench_layer_size import package_sizes, zipped_size

    # Given a built layer as layers/core/Makefile leaves it: the gateway's sources with their bytecode beside them in
    # __pycache__, the third-party packages as bytecode only
    python = tmp_path / "python"
    (python / "sms_gateway" / "__pycache__").mkdir(parents=True)
    (python / "sms_gateway" / "ports.py").write_bytes(b"s" * 100)
    (python / "sms_gateway" / "__pycache__" / "ports.cpython-313.pyc").write_bytes(b"b" * 150)
    (python / "typing_extensions.pyc").write_bytes(b"t" * 50)
    # sam deploy zips every file under the layer's directory (samcli.lib.package.utils.make_zip_with_permissions)
    shipped = [path for path in tmp_path.rglob("*") if path.is_file()]

    # When the benchmark measures it
    sizes = package_sizes(python)

    # Then it counts what Lambda gets, the bytecode in __pycache__ included
    assert sum(size for _, size, _ in sizes) == sum(path.stat().st_size for path in shipped) == 300
    assert sum(count for _, _, count in sizes) == len(shipped) == 3
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(shipped):
            archive.write(path, path.relative_to(tmp_path))
    assert zipped_size(tmp_path) == buffer.tell()
