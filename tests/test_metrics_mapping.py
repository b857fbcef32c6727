"""``measure_metric``'s error mapping and arithmetic, without processes.

Prometheus and the replicas are ``httpx.MockTransport`` handlers answering what the real ones
answer (``tests/test_metrics_providers.py`` runs the real ones). Every status code the module
docstring names is covered: 400/401/403/404 are configuration errors (non-retryable
``AnalysisConfigError``); 422, 429 and 5xx, timeouts, unreachable servers and "no data" are
``Error`` measurements.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.metrics import (
    BUILTIN_QUERIES,
    CONFIG_ERROR,
    MetricsActivities,
    _Counters,
    _NoData,
    builtin_from_deltas,
)
from fleetops.analysis import Measurement, MeasureRequest, Metric
from fleetops.settings import MetricsSettings

PROM = "http://prometheus.test:9090/"
Handler = Callable[[httpx.Request], httpx.Response]


def req(metric: Metric, endpoints: list[str] | None = None, window: float = 30) -> MeasureRequest:
    return MeasureRequest(
        metric=metric, agent_id="shop", color="green", version="v2",
        endpoints=endpoints or [], window_seconds=window,
    )  # fmt: skip


async def measure(handler: Handler, r: MeasureRequest, prometheus: str | None = PROM) -> Any:
    settings = MetricsSettings(prometheus_url=prometheus, query_timeout_seconds=2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        return await ActivityEnvironment().run(MetricsActivities(http, settings).measure_metric, r)


def vector(value: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1700000000.0, value]}]}}  # fmt: skip


RATE = Metric(name="rate", builtin="request_rate", success_condition="result > 1")


async def test_instant_query_of_a_builtin() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=vector("2.5"))

    assert await measure(handler, req(RATE)) == Measurement(value=2.5, phase="Successful")
    [request] = seen
    assert request.url.path == "/api/v1/query"
    assert request.url.params["query"] == (
        'sum(rate(agent_requests_total{fleetops_agent="shop",fleetops_color="green",'
        'endpoint="/execute"}[30s]))'
    )


def test_builtin_queries() -> None:
    sel = 'fleetops_agent="a",fleetops_color="blue"'
    rendered = {k: v.format(sel=sel, w="1m") for k, v in BUILTIN_QUERIES.items()}
    assert rendered == {
        "error_rate": f"sum(rate(agent_errors_total{{{sel}}}[1m])) / "
        f'sum(rate(agent_requests_total{{{sel},endpoint="/execute"}}[1m]))',
        "p95_latency_seconds": "histogram_quantile(0.95, sum by (le) "
        f"(rate(agent_request_duration_seconds_bucket{{{sel}}}[1m])))",
        "request_rate": f'sum(rate(agent_requests_total{{{sel},endpoint="/execute"}}[1m]))',
    }


async def test_query_metric_renders_placeholders_and_reads_a_scalar() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params["query"])
        body = {"data": {"resultType": "scalar", "result": [1.0, "0.25"]}}
        return httpx.Response(200, json=body)

    metric = Metric(name="q", query='x{a="$agent_id",c="$color",v="$version"}[$window]')
    m = await measure(handler, req(metric, window=1.5))
    assert m == Measurement(value=0.25, phase="Successful")
    assert seen == ['x{a="shop",c="green",v="v2"}[1500ms]']


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_configuration_errors(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="bad_data: parse error")

    with pytest.raises(ApplicationError, match=rf"prometheus answered {status} to ") as info:
        await measure(handler, req(RATE))
    assert info.value.type == CONFIG_ERROR and info.value.non_retryable
    assert info.value.message.endswith(
        "bad_data: parse error (fix the query or metrics.prometheus_url)"
    )


@pytest.mark.parametrize("status", [422, 429, 500, 502, 503, 504])
async def test_server_errors_are_error_measurements(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="x" * 1000)

    m = await measure(handler, req(RATE))
    assert m.phase == "Error" and m.value is None
    assert m.error.startswith(f"prometheus answered {status}: xxx")
    assert len(m.error) == 300  # bodies are shortened


async def test_timeout_is_an_error_measurement() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    m = await measure(handler, req(RATE))
    assert (m.phase, m.error) == ("Error", "prometheus unreachable: ReadTimeout: timed out")


async def test_unreachable_is_an_error_measurement() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("", request=request)

    m = await measure(handler, req(RATE))
    assert (m.phase, m.error) == ("Error", "prometheus unreachable: ConnectError")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"data": {"resultType": "vector", "result": []}}, "no data"),
        (vector("NaN"), "no data"),
        ({"data": {"resultType": "scalar", "result": [1.0, "NaN"]}}, "no data"),
        ({"status": "success"}, "unexpected prometheus response: KeyError: 'data'"),
        ({"data": []}, "unexpected prometheus response: TypeError: "),
        ("not json", "unexpected prometheus response: JSONDecodeError: "),
    ],
)
async def test_no_value_is_an_error_measurement(body: Any, error: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        text = body if isinstance(body, str) else json.dumps(body)
        return httpx.Response(200, text=text)

    m = await measure(handler, req(RATE))
    assert m.phase == "Error" and m.error is not None and m.error.startswith(error), m.error


async def test_a_range_result_is_a_configuration_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {"resultType": "matrix", "result": []}})

    with pytest.raises(ApplicationError, match=r"returns a matrix; analysis needs a scalar") as e:
        await measure(handler, req(RATE))
    assert e.value.type == CONFIG_ERROR and e.value.non_retryable


async def test_query_without_prometheus_is_a_configuration_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing to ask")

    with pytest.raises(ApplicationError, match=r"FLEETOPS_METRICS__PROMETHEUS_URL") as e:
        await measure(handler, req(Metric(name="q", query="up")), prometheus=None)
    assert e.value.type == CONFIG_ERROR and e.value.non_retryable


# --- direct scrapes -----------------------------------------------------------------------------


def exposition(requests: float, errors: float, buckets: dict[str, float]) -> str:
    lines = [
        "# TYPE agent_requests_total counter",
        f'agent_requests_total{{endpoint="/execute"}} {requests}',
        'agent_requests_total{endpoint="/health"} 500',
        "# TYPE agent_errors_total counter",
        f"agent_errors_total {errors}",
        "# TYPE agent_request_duration_seconds histogram",
        *(f'agent_request_duration_seconds_bucket{{le="{le}"}} {n}' for le, n in buckets.items()),
    ]
    return "\n".join(lines) + "\n"


def scrape_handler(pages: dict[str, list[str]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        page = pages[request.url.host]
        return httpx.Response(200, text=page.pop(0) if len(page) > 1 else page[0])

    return handler


async def test_scrape_sums_deltas_over_replicas() -> None:
    pages = {
        "r0": [exposition(10, 1, {"+Inf": 10}), exposition(30, 3, {"+Inf": 30})],
        # a restarted replica: its counters went down, so it counts from zero
        "r1": [exposition(50, 5, {"+Inf": 50}), exposition(20, 1, {"+Inf": 20})],
    }  # fmt: skip
    endpoints = ["http://r0", "http://r1/"]
    e = await measure(
        scrape_handler(pages), req(Metric(name="e", builtin="error_rate"), endpoints, 0.01), None
    )
    assert e.phase == "Successful" and e.value == pytest.approx((2 + 1) / (20 + 20))


async def test_scrape_errors_are_error_measurements() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "bad":
            return httpx.Response(503)
        if request.url.host == "garbage":
            return httpx.Response(200, text="agent_errors_total{ 1\n")
        return httpx.Response(200, text=exposition(1, 0, {"+Inf": 1}))

    metric = Metric(name="e", builtin="error_rate")

    async def error(endpoints: list[str]) -> str:
        m = await measure(handler, req(metric, endpoints, 0.01), None)
        assert m.phase == "Error"
        return str(m.error)

    assert await error([]) == "no replica endpoints to scrape"
    assert await error(["http://ok", "http://down"]) == (
        "scrape of http://down/metrics failed: ConnectError: refused"
    )
    assert await error(["http://bad"]) == "scrape of http://bad/metrics answered 503"
    assert (await error(["http://garbage"])).startswith(
        "scrape of http://garbage/metrics: unparsable metrics: ValueError"
    )
    assert await error(["http://ok"]) == "no requests in window"


def test_counters_parse_and_arithmetic() -> None:
    c = _Counters.parse(exposition(7, 2, {"0.1": 3, "1.0": 6, "+Inf": 7}))
    assert (c.requests, c.errors) == (7.0, 2.0)
    assert c.buckets == {0.1: 3.0, 1.0: 6.0, math.inf: 7.0}
    before = _Counters(4, 1, {0.1: 1, 1.0: 9})
    d = c - before
    assert (d.requests, d.errors) == (3.0, 1.0)
    assert d.buckets == {0.1: 2.0, 1.0: 6.0, math.inf: 7.0}  # 6 < 9: a reset, counted from 0
    s = d + _Counters(1, 1, {0.5: 2})
    assert (s.requests, s.errors) == (4.0, 2.0)
    assert s.buckets == {0.1: 2.0, 0.5: 2.0, 1.0: 6.0, math.inf: 7.0}


def test_builtins_from_deltas() -> None:
    d = _Counters(40, 10, {0.1: 20, 0.5: 38, math.inf: 40})
    assert builtin_from_deltas("request_rate", d, 4) == 10.0
    assert builtin_from_deltas("error_rate", d, 4) == 0.25
    assert builtin_from_deltas("p95_latency_seconds", d, 4) == pytest.approx(0.5)
    assert builtin_from_deltas("request_rate", _Counters(), 4) == 0.0
    for builtin in ("error_rate", "p95_latency_seconds"):
        with pytest.raises(_NoData, match=r"^no requests in window$"):
            builtin_from_deltas(builtin, _Counters(), 4)  # type: ignore[arg-type]
    with pytest.raises(_NoData, match=r"^no latency observations in window$"):
        builtin_from_deltas("p95_latency_seconds", _Counters(5, 0, {0.1: 5}), 4)


# --- more edges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.95, [(0.1, 0.0), (0.5, 0.0), (math.inf, 10.0)], 0.5),  # only +Inf observations
        (0.95, [(0.1, 1.0), (math.inf, 1.0)], 0.095),  # two buckets, one observation
        (0.5, [(0.1, 50.0), (0.2, 50.0), (0.5, 90.0), (math.inf, 100.0)], 0.1),  # rank on a bound
        (0.25, [(-1.0, 5.0), (1.0, 10.0), (math.inf, 10.0)], -1.0),  # negative lowest bound
        (0.75, [(-1.0, 5.0), (1.0, 10.0), (math.inf, 10.0)], 0.0),
        (0.5, [(0.1, 5.0), (0.5, 3.0), (math.inf, 10.0)], 0.1),  # non-monotonic counts fixed up
        (0.95, [(math.inf, 10.0)], math.nan),  # one bucket
    ],
    ids=["inf-only", "two", "on-bound", "negative", "negative-2", "monotonic", "one"],
)
def test_bucket_quantile_edges(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    from activities.metrics import bucket_quantile

    got = bucket_quantile(q, buckets)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_one_request_is_enough_for_an_error_rate() -> None:
    assert builtin_from_deltas("error_rate", _Counters(1, 1, {}), 1) == 1.0


def test_counters_sum_samples_of_one_series_name() -> None:
    text = (
        "# TYPE agent_requests_total counter\n"
        'agent_requests_total{endpoint="/execute",status="200"} 5\n'
        'agent_requests_total{endpoint="/execute",status="500"} 2\n'
        "# TYPE agent_errors_total counter\n"
        'agent_errors_total{kind="a"} 1\n'
        'agent_errors_total{kind="b"} 1\n'
        "# TYPE agent_request_duration_seconds histogram\n"
        'agent_request_duration_seconds_bucket{endpoint="/a",le="+Inf"} 3\n'
        'agent_request_duration_seconds_bucket{endpoint="/b",le="+Inf"} 4\n'
    )
    c = _Counters.parse(text)
    assert (c.requests, c.errors, c.buckets) == (7.0, 2.0, {math.inf: 7.0})


async def hang(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(3)  # far past the 0.1 s query timeout
    raise AssertionError("the query timeout did not fire")


async def test_prometheus_timeout_bounds_the_whole_query() -> None:
    settings = MetricsSettings(prometheus_url=PROM, query_timeout_seconds=0.1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as http:
        acts = MetricsActivities(http, settings)
        m = await ActivityEnvironment().run(acts.measure_metric, req(RATE))
    assert (m.phase, m.error) == ("Error", "prometheus query timed out after 0.1s")


async def test_scrape_timeout_bounds_the_whole_scrape() -> None:
    settings = MetricsSettings(query_timeout_seconds=0.1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as http:
        acts = MetricsActivities(http, settings)
        metric = Metric(name="e", builtin="error_rate")
        m = await ActivityEnvironment().run(acts.measure_metric, req(metric, ["http://r0/"], 0.01))
    assert (m.phase, m.error) == ("Error", "scrape of http://r0/metrics timed out after 0.1s")


async def test_first_failed_replica_in_endpoint_order_is_reported() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow":
            await asyncio.sleep(0.1)
            return httpx.Response(500)
        return httpx.Response(503)

    metric = Metric(name="e", builtin="error_rate")
    m = await measure(handler, req(metric, ["http://slow", "http://fast"], 0.01), None)
    assert m.error == "scrape of http://slow/metrics answered 500"


async def test_scrape_waits_the_window_and_heartbeats() -> None:
    pages = {"r0": [exposition(0, 0, {"+Inf": 0}), exposition(30, 0, {"+Inf": 30})]}
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    async with httpx.AsyncClient(transport=httpx.MockTransport(scrape_handler(pages))) as http:
        acts = MetricsActivities(http, MetricsSettings())
        metric = Metric(name="r", builtin="request_rate")
        m = await env.run(acts.measure_metric, req(metric, ["http://r0"], 1.5))
    assert m.value is not None and 30 / 2.5 <= m.value <= 30 / 1.5  # requests / elapsed seconds
    assert len(beats) == 2  # one per second of the window (1 s, then the last 0.5 s)
    assert all(len(b) == 1 and str(b[0]).endswith("s of the window left") for b in beats)


async def test_urls_keep_the_host() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.path == "/metrics":
            return httpx.Response(200, text=exposition(1, 0, {"+Inf": 1}))
        return httpx.Response(200, json=vector("1"))

    await measure(handler, req(RATE), prometheus="http://promX/")
    await measure(handler, req(RATE, ["http://nodeX/"], 0.01), None)
    assert seen == ["promx/api/v1/query", "nodex/metrics", "nodex/metrics"]


@pytest.fixture
def silent() -> Iterator[str]:
    """A listener whose accept queue holds connections that are never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_the_query_timeout_overrides_the_client_default(silent: str) -> None:
    # The client's own (short) timeout must not cut a measurement short.
    async with httpx.AsyncClient(timeout=0.01) as http:
        run_ = ActivityEnvironment().run
        prom = MetricsActivities(
            http, MetricsSettings(prometheus_url=silent, query_timeout_seconds=0.3)
        )
        m = await run_(prom.measure_metric, req(RATE))
        scrape = MetricsActivities(http, MetricsSettings(query_timeout_seconds=0.3))
        s = await run_(scrape.measure_metric, req(RATE, [silent], 0.01))
    assert m.error == "prometheus query timed out after 0.3s"
    assert s.error == f"scrape of {silent}/metrics timed out after 0.3s"
