"""StreamChannel arbitration: primary/backup, election id changes, departures, refused updates."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from finsy.proto import p4r, rpc_code
from p4runtime_testlib import DEVICE_ID, Client, Running, insert, netagg_program

from netagg.softswitch.codec import decode_u128
from netagg.softswitch.p4runtime_server import P4RuntimeServer
from netagg.softswitch.state import SwitchState

pytestmark = pytest.mark.loopback


@pytest.fixture
def client(sw: Running) -> Iterator[Client]:
    c = sw.client()
    yield c
    c.close()


def _is(update: p4r.MasterArbitrationUpdate, code: int, primary_election_id: int) -> bool:
    return (
        update.device_id == DEVICE_ID
        and update.status.code == code
        and decode_u128(update.election_id) == primary_election_id
    )


def test_highest_election_id_is_primary_and_others_backup(client: Client) -> None:
    first = client.stream()
    assert _is(first.arbitrate(10), rpc_code.OK, 10)

    lower = client.stream()
    assert _is(lower.arbitrate(5), rpc_code.ALREADY_EXISTS, 10)
    first.expect_nothing()  # the primary did not change: only the newcomer is told

    higher = client.stream()
    assert _is(higher.arbitrate(20), rpc_code.OK, 20)
    # The primary changed: everyone hears about it.
    assert _is(first.recv().arbitration, rpc_code.ALREADY_EXISTS, 20)
    assert _is(lower.recv().arbitration, rpc_code.ALREADY_EXISTS, 20)


def test_backup_raising_its_election_id_takes_over(client: Client) -> None:
    a = client.stream()
    a.arbitrate(10)
    b = client.stream()
    b.arbitrate(5)
    assert _is(b.arbitrate(30), rpc_code.OK, 30)  # same stream, new election id
    assert _is(a.recv().arbitration, rpc_code.ALREADY_EXISTS, 30)
    # The old primary can no longer write, the new one can.
    entry = client.table_entry("l2_forward", (0x0A0B0C0D0E0F,), "forward", port=1)
    client.election_id = 30
    client.push(client.program.config())
    with pytest.raises(grpc.RpcError) as err:
        client.write(insert(entry), election_id=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    client.write(insert(entry), election_id=30)


def test_primary_leaving_promotes_the_next_highest(client: Client) -> None:
    a = client.stream()
    a.arbitrate(10)
    b = client.stream()
    b.arbitrate(7)
    c = client.stream()
    c.arbitrate(3)
    a.close()
    assert _is(b.recv().arbitration, rpc_code.OK, 7)
    assert _is(c.recv().arbitration, rpc_code.ALREADY_EXISTS, 7)


def test_backup_leaving_notifies_nobody(client: Client) -> None:
    a = client.stream()
    a.arbitrate(10)
    b = client.stream()
    b.arbitrate(7)
    b.close()
    a.expect_nothing()


def test_election_id_in_use_ends_the_stream(client: Client) -> None:
    client.stream().arbitrate(10)
    dup = client.stream()
    dup.send(p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(device_id=DEVICE_ID)))
    dup.recv()  # election id 0: a backup
    with pytest.raises(grpc.RpcError) as err:
        dup.arbitrate(10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "election id" in err.value.details() and "used" in err.value.details()  # finsy's retry test


def test_unknown_device_id_ends_the_stream(client: Client) -> None:
    s = client.stream()
    with pytest.raises(grpc.RpcError) as err:
        s.arbitrate(1, device_id=DEVICE_ID + 1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_device_id_change_on_a_live_stream_is_refused(client: Client) -> None:
    s = client.stream()
    s.arbitrate(1)
    with pytest.raises(grpc.RpcError) as err:
        s.arbitrate(1, device_id=DEVICE_ID + 1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_roles_are_not_supported(client: Client) -> None:
    s = client.stream()
    s.send(
        p4r.StreamMessageRequest(
            arbitration=p4r.MasterArbitrationUpdate(device_id=DEVICE_ID, role=p4r.Role(name="aggregation"))
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        s.recv()
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_packet_out_is_answered_with_a_stream_error(client: Client) -> None:
    s = client.stream()
    s.arbitrate(1)
    s.send(p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\xff" * 60)))
    error = s.recv().error
    assert error.canonical_code == rpc_code.UNIMPLEMENTED
    assert "packet-out" in error.message
    assert error.packet_out.packet_out.payload == b"\xff" * 60
    # The stream stays usable.
    s.send(p4r.StreamMessageRequest(digest_ack=p4r.DigestListAck(digest_id=5)))
    assert s.recv().error.canonical_code == rpc_code.INVALID_ARGUMENT


def test_too_many_controllers() -> None:
    program = netagg_program()
    server = P4RuntimeServer(
        SwitchState(), None, DEVICE_ID, "127.0.0.1:0", reference_p4info=program.p4info_path, max_controllers=2
    )
    server.start()
    c = Client(server.bound_address, program)
    try:
        c.stream().arbitrate(1)
        c.stream().arbitrate(2)
        with pytest.raises(grpc.RpcError) as err:
            c.stream().arbitrate(3)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        c.close()
        server.stop(grace=0)


def test_write_needs_the_primary_election_id(sw: Running, client: Client) -> None:
    # No controller yet: a request that claims an election id is refused (as in BMv2's server).
    with pytest.raises(grpc.RpcError) as err:
        client.push(client.program.config())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    client.become_primary(4)
    backup = client.stream()
    backup.arbitrate(2)
    client.push(client.program.config())
    entry = client.table_entry("arp_reply", (0x0A000001,), "reply_arp", mac=0x020000000001)
    with pytest.raises(grpc.RpcError) as err:
        client.write(insert(entry), election_id=2)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sw.state.tables["arp_reply"].entries == {}
    client.write(insert(entry))
    assert sw.state.tables["arp_reply"].entries != {}
