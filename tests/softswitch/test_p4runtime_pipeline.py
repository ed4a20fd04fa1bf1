"""Get/SetForwardingPipelineConfig and Capabilities: accept netagg's program, refuse any other."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r
from p4runtime_testlib import DEVICE_ID, Client, Running, insert, netagg_program, running_server

from netagg.softswitch.p4runtime_server import P4RuntimeServer
from netagg.softswitch.state import Action, SwitchState

pytestmark = pytest.mark.loopback

Set = p4r.SetForwardingPipelineConfigRequest
Get = p4r.GetForwardingPipelineConfigRequest


@pytest.fixture
def client(sw: Running) -> Iterator[Client]:
    c = sw.client()
    c.become_primary(1)
    yield c
    c.close()


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_capabilities(client: Client) -> None:
    assert client.stub.Capabilities(p4r.CapabilitiesRequest()).p4runtime_api_version == "1.3.0"


def test_no_pipeline_yet(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.get_config()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # finsy recognises "no pipeline" by this message (and then pushes one).
    assert re.search(r"no .*\bforwarding pipeline config", err.value.details(), re.IGNORECASE)
    assert _code(lambda: client.read(client.table_entry("workers"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: client.write()) == grpc.StatusCode.FAILED_PRECONDITION


def test_push_builds_the_state_and_resets_registers(sw: Running, client: Client) -> None:
    generation = sw.state.generation
    client.push(client.program.config(cookie=0xC0FFEE))
    assert sw.pipeline.resets == 1
    assert sw.state.generation > generation
    assert set(sw.state.tables) >= {
        "workers",
        "results",
        "agg_addr",
        "l2_forward",
        "arp_reply",
        "ingress_loss",
        "egress_loss",
    }
    assert sw.state.tables["l2_forward"].default == Action("flood")
    assert set(sw.state.counters) >= {"drops", "job_drops", "job_stats"}


def test_get_returns_what_was_pushed_per_response_type(client: Client) -> None:
    program = client.program
    client.push(program.config(cookie=42))
    everything = client.get_config(Get.ALL)
    assert everything.p4info == program.p4info
    assert everything.p4_device_config == program.device_config
    assert everything.cookie.cookie == 42
    cookie = client.get_config(Get.COOKIE_ONLY)
    assert cookie.cookie.cookie == 42 and not cookie.HasField("p4info") and not cookie.p4_device_config
    p4info = client.get_config(Get.P4INFO_AND_COOKIE)
    assert p4info.p4info == program.p4info and not p4info.p4_device_config and p4info.cookie.cookie == 42
    device = client.get_config(Get.DEVICE_CONFIG_AND_COOKIE)
    assert device.p4_device_config == program.device_config and not device.HasField("p4info")


def test_cookie_absent_when_not_pushed(client: Client) -> None:
    client.push(client.program.config())
    assert not client.get_config(Get.COOKIE_ONLY).HasField("cookie")


def test_push_clears_forwarding_state(sw: Running, client: Client) -> None:
    client.push(client.program.config())
    client.write(
        insert(client.table_entry("l2_forward", (0x020000000001,), "forward", port=2)),
        insert(client.group_entry(1, [(1, 0), (2, 0)])),
    )
    sw.state.counters["drops"].count(1, 100)
    client.push(client.program.config())
    assert sw.state.tables["l2_forward"].entries == {}
    assert sw.state.mcast_groups == {}
    assert sw.state.counters["drops"].packets[1] == 0
    assert sw.pipeline.resets == 2


def test_a_different_program_is_refused_with_what_differs(sw: Running, client: Client) -> None:
    other = client.program.config()
    other.p4info.tables[0].preamble.name = other.p4info.tables[0].preamble.alias = "ipv4_lpm"
    other.p4info.actions[1].preamble.id ^= 0x7F
    with pytest.raises(grpc.RpcError) as err:
        client.push(other)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "netagg" in err.value.details()
    assert "'ipv4_lpm'" in err.value.details()
    assert "has id" in err.value.details()
    assert sw.pipeline.resets == 0
    assert _code(lambda: client.get_config()) == grpc.StatusCode.FAILED_PRECONDITION


def test_a_changed_bitwidth_is_refused(client: Client) -> None:
    other = client.program.config()
    for action in other.p4info.actions:
        if action.preamble.alias == "forward":
            action.params[0].bitwidth = 16
    with pytest.raises(grpc.RpcError) as err:
        client.push(other)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "action 'forward': params" in err.value.details()


def test_config_without_p4info_is_refused(client: Client) -> None:
    assert (
        _code(lambda: client.push(p4r.ForwardingPipelineConfig(p4_device_config=b"{}")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_a_bad_device_config_is_refused(client: Client) -> None:
    config = client.program.config()
    config.p4_device_config = b"not a BMv2 JSON"
    with pytest.raises(grpc.RpcError) as err:
        client.push(config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BMv2 JSON" in err.value.details()


def test_push_without_device_config_uses_the_reference_defaults(sw: Running, client: Client) -> None:
    config = client.program.config()
    config.p4_device_config = b""
    client.push(config)
    assert sw.state.tables["agg_addr"].default == Action("set_agg_addr", {"mac": 0, "addr": 0})


def test_verify_changes_nothing(sw: Running, client: Client) -> None:
    client.push(client.program.config(), action=Set.VERIFY)
    assert sw.pipeline.resets == 0
    assert _code(lambda: client.get_config()) == grpc.StatusCode.FAILED_PRECONDITION
    bad = client.program.config()
    bad.p4info.counters[0].size += 1
    assert _code(lambda: client.push(bad, action=Set.VERIFY)) == grpc.StatusCode.INVALID_ARGUMENT


def test_verify_and_save_then_commit(sw: Running, client: Client) -> None:
    assert _code(lambda: client.push(None, action=Set.COMMIT)) == grpc.StatusCode.NOT_FOUND
    client.push(client.program.config(cookie=7), action=Set.VERIFY_AND_SAVE)
    assert client.get_config(Get.COOKIE_ONLY).cookie.cookie == 7
    assert (
        _code(lambda: client.push(client.program.config(), action=Set.COMMIT))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    client.push(None, action=Set.COMMIT)
    assert _code(lambda: client.push(None, action=Set.COMMIT)) == grpc.StatusCode.NOT_FOUND
    assert sw.pipeline.resets == 1


def test_unsupported_actions(client: Client) -> None:
    assert (
        _code(lambda: client.push(client.program.config(), action=Set.RECONCILE_AND_COMMIT))
        == grpc.StatusCode.UNIMPLEMENTED
    )
    assert (
        _code(lambda: client.push(client.program.config(), action=Set.UNSPECIFIED))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_wrong_device_id(client: Client) -> None:
    client.push(client.program.config())
    client.device_id = DEVICE_ID + 1
    assert _code(lambda: client.get_config()) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.read(client.table_entry("workers"))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.push(client.program.config())) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.write()) == grpc.StatusCode.NOT_FOUND


def test_missing_reference_p4info_is_reported(tmp_path: Path) -> None:
    program = netagg_program()
    server = P4RuntimeServer(
        SwitchState(), None, DEVICE_ID, "127.0.0.1:0", reference_p4info=tmp_path / "absent.p4info.txtpb"
    )
    server.start()
    c = Client(server.bound_address, program)
    try:
        c.become_primary(1)
        with pytest.raises(grpc.RpcError) as err:
            c.push(program.config())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "absent.p4info.txtpb" in err.value.details()
    finally:
        c.close()
        server.stop(grace=0)


def test_unix_socket_address(tmp_path: Path) -> None:
    with running_server(address=f"unix:{tmp_path}/p4rt.sock") as running:
        assert running.server.port is None
        c = running.client()
        try:
            c.become_primary(1)
            c.push(c.program.config())
            assert c.get_config(Get.COOKIE_ONLY) is not None
        finally:
            c.close()
