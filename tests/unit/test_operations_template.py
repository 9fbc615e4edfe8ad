"""The operations dashboard and alarms in template.yaml: valid JSON, metrics the code emits, actions on the topic."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from sms_gateway.outcome_metrics import FINAL_STATUS_METRICS, MESSAGES_ACCEPTED, UPSTREAM_FAILURES
from sms_gateway.settings import Settings
from sms_gateway_tools.template import load_template, resources_of_type

CODE = Path(__file__).resolve().parents[2] / "layers" / "core" / "sms_gateway"
PSEUDO_PARAMETERS = {"AWS::Region": "us-east-1", "AWS::StackName": "sms-gateway-test", "AWS::AccountId": "1"}
SUBSTITUTION = re.compile(r"\$\{([^}!]+)\}")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def dashboard(template: dict[str, Any]) -> dict[str, Any]:
    [(_, resource)] = resources_of_type(template, "AWS::CloudWatch::Dashboard")
    body, variables = resource["DashboardBody"]["Fn::Sub"]
    resources = template["Resources"]

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return "42"  # the thresholds: numbers in the JSON
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        # Anything else must be a resource of this template (a Ref, or a GetAtt with a dot)
        assert name.split(".")[0] in resources, f"the dashboard names {name!r}, which the template does not define"
        return f"placeholder-{name}"

    rendered: dict[str, Any] = json.loads(SUBSTITUTION.sub(placeholder, body))
    return rendered


def emitted_metric_names() -> set[str]:
    """Every metric name the gateway's code emits: literal add_metric names, and the outcome metrics' tables."""
    source = "\n".join(path.read_text() for path in CODE.rglob("*.py"))
    literal = set(re.findall(r"add_metric\(\s*name=\"(\w+)\"", source))
    return literal | set(FINAL_STATUS_METRICS.values()) | {UPSTREAM_FAILURES, MESSAGES_ACCEPTED}


def metric_rows(dashboard: dict[str, Any]) -> list[list[Any]]:
    return [row for widget in dashboard["widgets"] for row in widget["properties"].get("metrics", [])]


def test_the_dashboard_body_renders_to_widgets_on_the_grid(dashboard):
    assert dashboard["widgets"]
    for widget in dashboard["widgets"]:
        assert widget["x"] + widget["width"] <= 24
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "us-east-1"
            assert widget["properties"]["metrics"]


def test_every_gateway_metric_the_dashboard_and_alarms_read_is_one_the_code_emits(template, dashboard):
    emitted = emitted_metric_names()
    # The code's own names are found (a broken grep would make the check below pass vacuously)
    assert {"MessagesSubmitted", "MessagesAccepted", "DeliveryReportLatency", "MessagesDelivered"} <= emitted
    read = {row[1] for row in metric_rows(dashboard) if row[0] == "SmsGateway"}
    searched = {
        name
        for row in metric_rows(dashboard)
        if isinstance(row[0], dict)
        for name in re.findall(r"MetricName=\"(\w+)\"", row[0]["expression"])
    }
    alarmed = {
        query["MetricStat"]["Metric"]["MetricName"]
        for _, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm")
        for query in alarm.get("Metrics", [])
        if "MetricStat" in query and query["MetricStat"]["Metric"]["Namespace"] == "SmsGateway"
    }
    assert "UpstreamFailures" in searched and "UpstreamFailures" in alarmed
    # An upstream that stops sending DLRs shows as settle-check expiries: an alarm watches their share
    assert "MessagesExpiredWithoutDlr" in alarmed
    # ... or by one of the template's metric filters (API Gateway's throttled requests, which the code never sees)
    filtered = {
        transformation["MetricName"]
        for _, spec in resources_of_type(template, "AWS::Logs::MetricFilter")
        for transformation in spec["MetricTransformations"]
        if transformation["MetricNamespace"] == "SmsGateway"
    }
    emitted |= filtered
    assert read | searched | alarmed <= emitted, f"not emitted by the code: {(read | searched | alarmed) - emitted}"


def test_the_dashboard_shows_the_issue_s_figures(dashboard):
    read = {row[1] for row in metric_rows(dashboard) if isinstance(row[0], str)}
    # accepted, submitted, delivered, failed per minute; DLR latency; queue depth and age; errors and throttles
    assert {"MessagesAccepted", "MessagesSubmitted", "MessagesDelivered", "MessagesUndelivered"} <= read
    assert {"DeliveryReportLatency", "ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesVisible"} <= read
    assert {"Errors", "Throttles"} <= read
    latency = [row[-1]["stat"] for row in metric_rows(dashboard) if row[1:2] == ["DeliveryReportLatency"]]
    assert {"p50", "p90"} <= set(latency)


def test_the_dashboard_covers_every_queue_and_function(template, dashboard):
    shown = {row[3] for row in metric_rows(dashboard) if isinstance(row[0], str) and row[0].startswith("AWS/")}
    for logical_id, _ in resources_of_type(template, "AWS::SQS::Queue"):
        assert f"placeholder-{logical_id}.QueueName" in shown
    for logical_id, _ in resources_of_type(template, "AWS::Serverless::Function"):
        for metric in ("Errors", "Throttles"):
            assert ["AWS/Lambda", metric, "FunctionName", f"placeholder-{logical_id}"] in [
                row[:4] for row in metric_rows(dashboard)
            ]


def test_every_alarm_notifies_the_alarm_topic_and_shows_on_the_dashboard(template, dashboard):
    alarms = dict(resources_of_type(template, "AWS::CloudWatch::Alarm"))
    assert len(alarms) >= 5
    for logical_id, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}], logical_id
    [status] = [w for w in dashboard["widgets"] if w["type"] == "alarm"]
    assert sorted(status["properties"]["alarms"]) == sorted(f"placeholder-{name}.Arn" for name in alarms)


def test_every_metric_an_alarm_fetches_for_its_expression_is_read_by_it(template):
    # A query left out of the expression (the api's SendsUndone or RequestsFailed, say) would silently count nothing
    for logical_id, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm"):
        queries = alarm.get("Metrics", [])
        expressions = " ".join(query["Expression"] for query in queries if "Expression" in query)
        for query in queries:
            if "MetricStat" in query and query.get("ReturnData") is False:
                assert re.search(rf"\b{query['Id']}\b", expressions), f"{logical_id}: {query['Id']} is not read"


def test_each_function_has_an_error_rate_alarm_and_each_dispatch_queue_an_age_alarm(template):
    alarms = [alarm for _, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm")]
    error_rate_functions = {
        query["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"]
        for alarm in alarms
        for query in alarm.get("Metrics", [])
        if query.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "Errors"
    }
    functions = {logical_id for logical_id, _ in resources_of_type(template, "AWS::Serverless::Function")}
    assert error_rate_functions == functions
    ages = [a for a in alarms if a.get("MetricName") == "ApproximateAgeOfOldestMessage"]
    assert [a["Dimensions"][0]["Value"] for a in ages] == [
        {"Fn::GetAtt": ["DispatchQueue", "QueueName"]},
        {"Fn::GetAtt": ["PriorityDispatchQueue", "QueueName"]},
    ]
    # And single sends (one-time codes) are late sooner than bulk: their alarm fires earlier in every stage
    for stage, thresholds in template["Mappings"]["AlarmThresholds"].items():
        assert thresholds["PriorityDispatchQueueAgeSeconds"] < thresholds["DispatchQueueAgeSeconds"], stage


def test_every_stage_has_every_alarm_threshold(template):
    stages = template["Parameters"]["Stage"]["AllowedValues"]
    thresholds = template["Mappings"]["AlarmThresholds"]
    assert sorted(thresholds) == sorted(stages)
    used = set(re.findall(r"AlarmThresholds', \{'Ref': 'Stage'\}, '(\w+)'", str(template["Resources"])))
    assert used
    for stage in stages:
        assert used <= set(thresholds[stage]), stage
        assert all(isinstance(value, int) and value > 0 for value in thresholds[stage].values())


def test_a_scheduled_release_that_keeps_failing_lands_in_the_alarmed_schedule_dlq(template):
    # Scheduler invokes scheduled_dispatch asynchronously: its retry policy and DLQ cover only an invoke refused. A
    # release that raises is retried by Lambda and then discarded, unless the function names an on-failure
    # destination: the batch would stay charged and never be sent, with no DLQ or alarm to say so.
    resources = template["Resources"]
    invoke_config = resources["ScheduledDispatchFunction"]["Properties"]["EventInvokeConfig"]
    on_failure = invoke_config["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    assert on_failure["Destination"] == {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}
    alarm = resources["ScheduleDeadLetterAlarm"]["Properties"]
    assert {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "QueueName"]}} in alarm[
        "Dimensions"
    ]


def stateful_resource_types() -> set[str]:
    """The resource types cfn-lint calls stateful (rule I3011): deleting or replacing one loses what it holds."""
    spec = json.loads(files("cfnlint.data.AdditionalSpecs").joinpath("StatefulResources.json").read_text())
    return set(spec["ResourceTypes"])


# What no deploy can rebuild: the table (accounts, credentials, messages, balances) and the keys that seal what the
# table stores. A bucket or a secret added later holds data too.
KEPT_TYPES = {"AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable", "AWS::KMS::Key", "AWS::S3::Bucket"}
KEPT_TYPES |= {"AWS::SecretsManager::Secret"}
# Stateful by type but holding nothing stored: the alarm topic's key encrypts alarm notifications in flight only.
NOT_KEPT = {"AlarmTopicKey"}


def test_a_stack_deleted_or_replaced_keeps_the_data_and_the_keys_that_open_it(template):
    # Deleting or replacing a stack deletes its table with every account and message, and schedules for deletion
    # the key that decrypts every stored webhook token and signing secret, unless the resource says Retain
    resources = template["Resources"]
    stateful = stateful_resource_types()
    assert {"AWS::DynamoDB::Table", "AWS::KMS::Key", "AWS::SQS::Queue"} <= stateful
    checked = []
    for logical_id, resource in resources.items():
        if resource["Type"] not in stateful:
            continue
        # Every stateful resource says what happens to it, so the choice is made, not defaulted
        assert {"DeletionPolicy", "UpdateReplacePolicy"} <= set(resource), logical_id
        if resource["Type"] in KEPT_TYPES and logical_id not in NOT_KEPT:
            assert resource["DeletionPolicy"] == "Retain", logical_id
            assert resource["UpdateReplacePolicy"] == "Retain", logical_id
            checked.append(logical_id)
    assert {"GatewayTable", "WebhookCredentialsKey"} <= set(checked)
    assert set(resources) >= NOT_KEPT


def test_a_throttled_api_raises_an_alarm(template):
    # A request API Gateway refuses with 429 (its throttle) never reaches the api function, and one Lambda throttles
    # never runs it: neither is an error nor an invocation, so ApiErrorRateAlarm cannot see clients being refused
    resources = template["Resources"]
    filters = dict(resources_of_type(template, "AWS::Logs::MetricFilter"))
    throttled = {
        (transformation["MetricNamespace"], transformation["MetricName"]): spec
        for spec in filters.values()
        if spec["LogGroupName"] == {"Ref": "HttpApiAccessLogGroup"}
        for transformation in spec["MetricTransformations"]
    }
    assert len(throttled) == 1
    [((namespace, name), spec)] = throttled.items()
    pattern = spec["FilterPattern"]
    # Only the 429s API Gateway answered itself: the api function answers 429 too (a locked-out login), and those
    # reached it (the Lambda invoke's own status, integrationStatus, is then 200)
    assert '$.status = "429"' in pattern and '$.integrationStatus != "200"' in pattern
    # Every field the filter reads is one the access log writes, as a string
    access_log = json.loads(resources["HttpApi"]["Properties"]["AccessLogSettings"]["Format"])
    read = set(re.findall(r"\$\.(\w+)", pattern + json.dumps(spec["MetricTransformations"])))
    assert read <= set(access_log), read - set(access_log)

    alarms = [alarm for _, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm")]
    [alarm] = [
        a
        for a in alarms
        if any(q.get("MetricStat", {}).get("Metric", {}).get("MetricName") == name for q in a.get("Metrics", []))
    ]
    metrics = {
        query["MetricStat"]["Metric"]["Namespace"] + "/" + query["MetricStat"]["Metric"]["MetricName"]: query
        for query in alarm["Metrics"]
        if "MetricStat" in query
    }
    assert f"{namespace}/{name}" in metrics
    lambda_throttles = metrics["AWS/Lambda/Throttles"]["MetricStat"]["Metric"]
    assert lambda_throttles["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ApiFunction"}}]
    # This stack's API alone: another stack's requests in the same account do not count
    assert metrics[f"{namespace}/{name}"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "ApiId", "Value": {"Ref": "HttpApi"}}
    ]
    assert metrics["AWS/ApiGateway/Count"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "ApiId", "Value": {"Ref": "HttpApi"}}
    ]
    assert alarm["Threshold"] == {"Fn::FindInMap": ["AlarmThresholds", {"Ref": "Stage"}, "ApiThrottledPercent"]}


RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
SMALL_NUMBERS = {"once": 1, "twice": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def numbers_in(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\b\d+\b", text)}


def runbook_rows(heading: str) -> list[list[str]]:
    """The cells of each row of the first table under a runbook heading (header and rule left out)."""
    section = RUNBOOK.read_text().split(f"\n{heading}\n", 1)[1]
    table = section[section.index("\n|") :].split("\n\n", 1)[0]
    rows = [line for line in table.strip().splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def dead_letter_counts(template: dict[str, Any]) -> dict[str, int]:
    """The numbers the DLQ texts state, from the code and the template that decide them."""
    resources = template["Resources"]
    settings = Settings()
    invoke = resources["ScheduledDispatchFunction"]["Properties"]["EventInvokeConfig"]
    # Both dispatch queues (bulk, single sends) redrive into the one dispatch DLQ, after the same receives.
    receives = {
        resources[queue]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
        for queue in ("DispatchQueue", "PriorityDispatchQueue")
    }
    assert len(receives) == 1, receives
    return {
        "dispatch_attempts": settings.dispatch_max_attempts,
        "dispatch_receives": resources["DispatchQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"],
        "notify_attempts": len(settings.notify_retry_delays) + 1,
        "notify_hours": round(sum(settings.notify_retry_delays) / 3600),
        "notify_receives": resources["NotifyQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"],
        "release_attempts": invoke["MaximumRetryAttempts"] + 1,
    }


def test_the_dead_letter_alarms_state_the_attempts_the_code_and_template_make(template):
    # The dispatch DLQ alarm said 8 attempts while the dispatcher parks a record after DISPATCH_MAX_ATTEMPTS (6)
    counts = dead_letter_counts(template)
    resources = template["Resources"]

    def described(logical_id: str) -> set[int]:
        return numbers_in(resources[logical_id]["Properties"]["AlarmDescription"])

    assert described("DispatchDeadLetterAlarm") == {counts["dispatch_attempts"], counts["dispatch_receives"]}
    assert described("NotifyDeadLetterAlarm") == {counts["notify_attempts"], counts["notify_hours"]}
    assert described("ScheduleDeadLetterAlarm") == {counts["release_attempts"]}


def test_the_runbook_states_the_attempts_and_thresholds_the_code_and_template_use(template):
    counts = dead_letter_counts(template)
    text = RUNBOOK.read_text()
    # `SETTING_NAME` (N): N is the setting's default
    defaults = Settings().model_dump()
    named = re.findall(r"`([A-Z_]+)` \((\d+)\)", text)
    assert named
    for name, value in named:
        assert defaults[name.lower()] == int(value), name

    dlqs = {row[0]: " ".join(row[1:]) for row in runbook_rows("## Replay a dead-letter queue")}
    [dispatch] = [row for queue, row in dlqs.items() if "dispatch-dlq" in queue]
    [notify] = [row for queue, row in dlqs.items() if "notify-dlq" in queue]
    [schedule] = [row for queue, row in dlqs.items() if "schedule-dlq" in queue]
    assert re.findall(r"after (\d+) receives", dispatch) == [str(counts["dispatch_receives"])]
    assert re.findall(r"failed all (\d+) attempts", notify) == [str(counts["notify_attempts"])]
    assert re.findall(r"after (\d+) receives", notify) == [str(counts["notify_receives"])]
    assert [SMALL_NUMBERS[word] for word in re.findall(r"raised (\w+) times", schedule)] == [counts["release_attempts"]]

    # Each alarm's threshold column, dev / prod, is the template's
    alarms = template["Resources"]
    thresholds = template["Mappings"]["AlarmThresholds"]
    rows = runbook_rows("### Alarms")
    assert len(rows) >= 6
    for row in rows:
        name = re.findall(r"`(\w+|<Function>\w+)`", row[0])[0].replace("<Function>", "Api")
        threshold = alarms[name]["Properties"]["Threshold"]
        if isinstance(threshold, dict):
            key = threshold["Fn::FindInMap"][2]
            expected = [thresholds["dev"][key], thresholds["prod"][key]]
        else:
            expected = [threshold, threshold]
        stated = [int(n) for n in re.findall(r"\d+", row[2])]
        assert (stated * 2 if len(stated) == 1 else stated) == expected, name


def test_each_alarm_description_names_a_runbook_section_and_thresholds_that_exist(template):
    headings = set(re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    thresholds = set(template["Mappings"]["AlarmThresholds"]["prod"])
    for logical_id, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm"):
        description = alarm["AlarmDescription"]
        text = description["Fn::Sub"] if isinstance(description, dict) else description
        for section in re.findall(r'docs/runbook\.md, "([^"]+)"', text):
            assert section in headings or f"`{section}`" in RUNBOOK.read_text(), (logical_id, section)
        assert set(re.findall(r"AlarmThresholds\.(\w+)", text)) <= thresholds, logical_id


def test_the_runbook_states_the_longest_wait_of_a_dispatch_record_the_dispatcher_gives():

    from sms_gateway.logic.dispatch import BACKOFF_CAP_SECONDS, MAX_SUBMIT_THROTTLES

    [age] = [" ".join(row) for row in runbook_rows("### Alarms") if "`DispatchQueueAgeAlarm`" in row[0]]
    stated = [int(n) * 60 for n in re.findall(r"back off up to (\d+) minutes", age)]
    assert stated and max(stated) >= BACKOFF_CAP_SECONDS, (stated, BACKOFF_CAP_SECONDS)
    assert f"up to {MAX_SUBMIT_THROTTLES} throttles" in age


def test_a_deleted_stack_leaves_only_what_the_docs_say_it_leaves(template):
    # Given the docs' list of what a deleted stack leaves (docs/template.md, "What a deleted stack leaves")
    text = (Path(__file__).resolve().parents[2] / "docs" / "template.md").read_text()
    section = text.split("## What a deleted stack leaves", 1)[1].split("\n## ", 1)[0]
    # Then each SAM layer, which SAM retains unless its RetentionPolicy says Delete (the SAM specification's
    # default is Retain: the transform writes DeletionPolicy: Retain on the AWS::Lambda::LayerVersion), has the
    # policy the docs state, and a retained one is named there with how to remove its versions
    for logical_id, props in resources_of_type(template, "AWS::Serverless::LayerVersion"):
        policy = str(props.get("RetentionPolicy", "Retain")).capitalize()
        stated = re.search(rf"`{logical_id}` sets `RetentionPolicy: (\w+)`", section)
        assert stated and stated.group(1) == policy, (logical_id, policy)
        assert policy == "Delete" or "delete-layer-version" in section, logical_id
