"""A standard P4Runtime client (finsy, as the controller uses it) drives the server end to end."""

from __future__ import annotations

import asyncio

import finsy as fy
import pytest
from p4runtime_testlib import DEVICE_ID, TIMEOUT_S, running_server

from netagg.constants import FLOOD_MCAST_GROUP, NUM_DROP_REASONS, DropReason
from netagg.softswitch.state import Action

pytestmark = pytest.mark.loopback


def test_finsy_switch_pushes_writes_and_reads() -> None:
    with running_server() as sw:
        options = fy.SwitchOptions(
            p4info=sw.program.p4info_path, p4blob=sw.program.bmv2_json_path, device_id=DEVICE_ID
        )

        async def session() -> None:
            async with fy.Switch("softswitch", sw.address, options) as switch:
                assert switch.is_primary
                assert sw.pipeline.resets == 1  # finsy found no pipeline and pushed its own
                await switch.insert(
                    [
                        fy.P4TableEntry(
                            "l2_forward",
                            match=fy.P4TableMatch(dst_addr=0x020000000001),
                            action=fy.P4TableAction("forward", port=3),
                        ),
                        fy.P4MulticastGroupEntry(FLOOD_MCAST_GROUP, replicas=[(1, 0), (2, 0)]),
                    ]
                )
                await switch.modify(
                    [
                        fy.P4TableEntry(
                            "agg_addr",
                            is_default_action=True,
                            action=fy.P4TableAction(
                                "set_agg_addr", mac="02:aa:00:00:00:01", addr="10.0.0.254"
                            ),
                        )
                    ]
                )

                entries = [e async for e in switch.read(fy.P4TableEntry("l2_forward"))]
                assert len(entries) == 1
                assert entries[0].match == fy.P4TableMatch(dst_addr=0x020000000001)
                assert entries[0].action == fy.P4TableAction("forward", port=3)

                groups = [g async for g in switch.read(fy.P4MulticastGroupEntry())]
                # finsy decodes a replica with instance 0 as its bare port.
                assert [(g.multicast_group_id, tuple(g.replicas)) for g in groups] == [
                    (FLOOD_MCAST_GROUP, (1, 2))
                ]

                sw.state.counters["drops"].count(DropReason.STALE, 60)
                drops = [c async for c in switch.read(fy.P4CounterEntry("drops"))]
                assert len(drops) == NUM_DROP_REASONS
                assert (drops[DropReason.STALE].packet_count, drops[DropReason.STALE].byte_count) == (1, 60)

                await switch.delete_all()  # reads every wildcard finsy knows, deletes, resets defaults
                assert [e async for e in switch.read(fy.P4TableEntry())] == []

        asyncio.run(asyncio.wait_for(session(), TIMEOUT_S * 3))

        assert sw.state.tables["l2_forward"].entries == {}
        assert sw.state.mcast_groups == {}
        assert sw.state.tables["agg_addr"].default == sw.state.tables["agg_addr"].initial_default

        # A second session finds the pipeline by its cookie and does not push again.
        async def reconnect() -> None:
            async with fy.Switch("softswitch", sw.address, options) as switch:
                await switch.insert(
                    [
                        fy.P4TableEntry(
                            "ingress_loss",
                            match=fy.P4TableMatch(port=1),
                            action=fy.P4TableAction("set_loss", threshold=1 << 31),
                        )
                    ]
                )

        asyncio.run(asyncio.wait_for(reconnect(), TIMEOUT_S * 3))
        assert sw.pipeline.resets == 1
        assert sw.state.tables["ingress_loss"].entries == {(1,): Action("set_loss", {"threshold": 1 << 31})}


def test_finsy_backup_sees_the_primary_and_cannot_write() -> None:
    with running_server() as sw:
        program = sw.program

        def options(election_id: int) -> fy.SwitchOptions:
            return fy.SwitchOptions(
                p4info=program.p4info_path,
                p4blob=program.bmv2_json_path,
                device_id=DEVICE_ID,
                initial_election_id=election_id,
            )

        async def session() -> None:
            async with (
                fy.Switch("primary", sw.address, options(10)) as primary,
                fy.Switch("backup", sw.address, options(5)) as backup,
            ):
                assert primary.is_primary and not backup.is_primary
                entry = fy.P4TableEntry(
                    "arp_reply",
                    match=fy.P4TableMatch(target_addr=0x0A000001),
                    action=fy.P4TableAction("reply_arp", mac=0x020000000001),
                )
                with pytest.raises(fy.P4ClientError) as err:
                    await backup.insert([entry])
                assert err.value.code == fy.GRPCStatusCode.PERMISSION_DENIED
                await primary.insert([entry])
                # The backup reads what the primary wrote.
                assert [e async for e in backup.read(fy.P4TableEntry("arp_reply"))] == [entry]

        asyncio.run(asyncio.wait_for(session(), TIMEOUT_S * 3))
        assert len(sw.state.tables["arp_reply"].entries) == 1
