"""The P4Runtime server against clients that misbehave: idle streams, writes from outside the primary's connection,
and TLS (server certificate, client certificates)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc
from p4runtime_testlib import DEVICE_ID, TIMEOUT_S, PipelineStub, Running, netagg_program
from pki import make_pki

from netagg.softswitch.codec import encode_u128
from netagg.softswitch.p4runtime_server import P4RuntimeServer, TlsConfig
from netagg.softswitch.state import SwitchState

pytestmark = pytest.mark.loopback


@contextlib.contextmanager
def server(**options: object) -> Iterator[Running]:
    program = netagg_program()
    state = SwitchState()
    pipeline = PipelineStub()
    srv = P4RuntimeServer(
        state,
        pipeline,
        DEVICE_ID,
        "127.0.0.1:0",
        reference_p4info=program.p4info_path,
        reference_bmv2_json=program.bmv2_json_path,
        **options,  # type: ignore[arg-type]
    )
    srv.start()
    try:
        yield Running(srv, state, pipeline, program)
    finally:
        srv.stop(grace=0)


def _stream_error(stream: object, timeout: float = TIMEOUT_S) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stream.recv(timeout)  # type: ignore[attr-defined]
    return info.value


def test_idle_streams_are_bounded_and_reads_and_writes_go_on() -> None:
    """Streams that never arbitrate used to take every server thread, hanging every Read and Write."""
    with server(max_unarbitrated=4, arbitration_timeout=60.0) as sw:
        idle = sw.client()
        streams = [idle.stream() for _ in range(40)]  # more than the server's threads
        # Every stream beyond the bound ended an older idle one: 36 of them are told why.
        ended = []
        for s in streams:
            with contextlib.suppress(AssertionError):  # still open: recv times out
                ended.append(_stream_error(s, timeout=0.5 if len(ended) >= 36 else TIMEOUT_S))
        assert len(ended) == 36
        assert {e.code() for e in ended} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "without having arbitrated" in ended[0].details()
        # A controller still gets threads: it arbitrates, pushes, writes and reads at once.
        ctl = sw.client()
        ctl.become_primary(1)
        ctl.push(ctl.program.config())
        ctl.write()
        ctl.read(p4r.Entity(table_entry=p4r.TableEntry()))
        ctl.close()
        idle.close()


def test_a_stream_that_does_not_arbitrate_is_ended() -> None:
    with server(arbitration_timeout=0.5) as sw:
        c = sw.client()
        started = time.monotonic()
        error = _stream_error(c.stream())
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no MasterArbitrationUpdate within 0.5 s" in error.details()
        assert time.monotonic() - started < TIMEOUT_S
        # The slot it held is free again: as many idle streams as allowed can open once more.
        c.become_primary(1)
        c.close()


def test_an_arbitrated_stream_outlives_the_arbitration_timeout() -> None:
    with server(arbitration_timeout=0.3) as sw:
        c = sw.client()
        stream = c.become_primary(1)
        stream.expect_nothing(timeout=1.0)  # no error after the timeout: only idle streams are ended
        c.push(c.program.config())
        c.close()


def test_write_with_the_primary_election_id_from_another_connection_is_refused(sw: Running) -> None:
    primary = sw.client()
    primary.become_primary(10)
    primary.push(primary.program.config())
    # Another process would have its own TCP connection; in this process, a local subchannel pool gives one.
    with grpc.insecure_channel(sw.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        intruder = p4r_grpc.P4RuntimeStub(channel)
        requests = [
            (intruder.Write, p4r.WriteRequest(device_id=DEVICE_ID, election_id=encode_u128(10))),
            (
                intruder.SetForwardingPipelineConfig,
                p4r.SetForwardingPipelineConfigRequest(
                    device_id=DEVICE_ID,
                    election_id=encode_u128(10),
                    action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
                    config=primary.program.config(),
                ),
            ),
        ]
        for rpc, request in requests:
            with pytest.raises(grpc.RpcError) as info:
                rpc(request, timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "belongs to the stream of" in info.value.details()
    # The primary itself, on its own connection, still writes.
    primary.write()
    primary.close()


# --------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _capabilities(channel: grpc.Channel) -> str:
    stub = p4r_grpc.P4RuntimeStub(channel)
    return stub.Capabilities(p4r.CapabilitiesRequest(), timeout=TIMEOUT_S).p4runtime_api_version


def test_tls_server_answers_a_client_that_trusts_its_ca_only(pki: Path) -> None:
    tls = TlsConfig.from_files(pki / "server.pem", pki / "server.key")
    with server(tls=tls) as sw:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(sw.address, creds) as channel:
            assert _capabilities(channel)
        with grpc.insecure_channel(sw.address) as channel, pytest.raises(grpc.RpcError) as info:
            _capabilities(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    tls = TlsConfig.from_files(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    with server(tls=tls) as sw:
        ca = (pki / "ca.pem").read_bytes()
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(sw.address, anonymous) as channel, pytest.raises(grpc.RpcError) as info:
            _capabilities(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        signed = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        with grpc.secure_channel(sw.address, signed) as channel:
            assert _capabilities(channel)
            # A client with a certificate still has to arbitrate before it writes.
            stub = p4r_grpc.P4RuntimeStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Write(
                    p4r.WriteRequest(device_id=DEVICE_ID, election_id=encode_u128(1)), timeout=TIMEOUT_S
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot read the TLS certificate .*missing.pem"):
        TlsConfig.from_files(tmp_path / "missing.pem", tmp_path / "missing.key")
