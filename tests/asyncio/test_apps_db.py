"""Real database clients on ``ats_cffi.asyncio``'s loop, each against the real server it
talks to, started by a fixture for the module (``realservers.py``): asyncpg against
PostgreSQL, redis-py's asyncio client against redis-server. Each test runs on a loop of
its own (``run_on_ats_loop``), which checks that it is an ``ats_cffi.asyncio.Loop``."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from tests.asyncio.realservers import (
    RealServer,
    postgres_binaries,
    postgres_server,
    redis_binary,
    redis_server,
    run_on_ats_loop,
)

MIB = 1 << 20
ROWS = 1000


# --------------------------------------------------------------------------- asyncpg


@pytest.fixture(scope="module")
def postgres() -> Iterator[RealServer]:
    """A PostgreSQL cluster of its own for this module (initdb in a temp dir, trust auth)."""
    if postgres_binaries() is None:
        pytest.skip(
            "PostgreSQL's initdb/postgres not found on PATH nor in /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
    with postgres_server() as server:
        yield server


@pytest.fixture
def asyncpg() -> Any:
    return pytest.importorskip("asyncpg")


def rows(n: int = ROWS) -> list[tuple[int, str, bytes]]:
    return [(i, f"name-{i}", bytes([i % 256]) * (i % 50)) for i in range(n)]


async def pg_connect(asyncpg: Any, postgres: RealServer) -> Any:
    return await asyncpg.connect(postgres.info["dsn"], timeout=10, command_timeout=20)


def test_asyncpg_queries(postgres: RealServer, asyncpg: Any) -> None:
    """A table, 1,000 rows by executemany, a prepared statement, two rolled-back
    transactions (an exception in ``async with``, an explicit rollback) that change
    nothing, a committed one that does; then a clean close."""

    async def main() -> None:
        conn = await pg_connect(asyncpg, postgres)
        try:
            await conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, data bytea)")
            await conn.executemany("INSERT INTO items VALUES ($1, $2, $3)", rows())
            assert await conn.fetchval("SELECT count(*) FROM items") == ROWS
            assert await conn.fetchval("SELECT sum(id) FROM items") == sum(range(ROWS))
            stmt = await conn.prepare("SELECT name, length(data) FROM items WHERE id = $1")
            for i in (0, 1, 499, 999):
                assert tuple(await stmt.fetchrow(i)) == (f"name-{i}", i % 50)
            assert await stmt.fetchrow(ROWS) is None
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("DELETE FROM items WHERE id < 500")
                    1 / 0  # noqa: B018
            tr = conn.transaction()
            await tr.start()
            await conn.execute("UPDATE items SET name = 'changed'")
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM items WHERE name = 'changed'") == 0
            assert await conn.fetchval("SELECT count(*) FROM items") == ROWS
            async with conn.transaction():
                await conn.execute("DELETE FROM items WHERE id >= 900")
            assert await conn.fetchval("SELECT count(*) FROM items") == 900
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO items VALUES (1, 'dup', NULL)")
            await conn.execute("DROP TABLE items")
        finally:
            await conn.close(timeout=10)
        assert conn.is_closed()

    run_on_ats_loop(main)


def test_asyncpg_copy(postgres: RealServer, asyncpg: Any) -> None:
    """COPY in (``copy_records_to_table``, and CSV bytes by ``copy_to_table``) and COPY out
    (``copy_from_table`` into a file-like object), compared row for row."""

    async def main() -> None:
        conn = await pg_connect(asyncpg, postgres)
        try:
            await conn.execute("CREATE TEMP TABLE c (id int, name text, data bytea)")
            status = await conn.copy_records_to_table("c", records=rows())
            assert status == f"COPY {ROWS}"
            csv_in = "".join(f"{i},csv-{i}\n" for i in range(ROWS, 2 * ROWS)).encode()
            status = await conn.copy_to_table(
                "c", source=io.BytesIO(csv_in), columns=["id", "name"], format="csv"
            )
            assert status == f"COPY {ROWS}"
            out = io.BytesIO()
            status = await conn.copy_from_table(
                "c", output=out, columns=["id", "name"], format="csv"
            )
            assert status == f"COPY {2 * ROWS}"
            copied = sorted(
                csv.reader(io.StringIO(out.getvalue().decode())), key=lambda r: int(r[0])
            )
            expected = [[str(i), f"name-{i}"] for i in range(ROWS)]
            expected += [[str(i), f"csv-{i}"] for i in range(ROWS, 2 * ROWS)]
            assert copied == expected
            back = await conn.fetch("SELECT id, name, data FROM c WHERE id < $1 ORDER BY id", ROWS)
            assert [tuple(r) for r in back] == rows()
        finally:
            await conn.close(timeout=10)

    run_on_ats_loop(main)


def test_asyncpg_large_results(postgres: RealServer, asyncpg: Any) -> None:
    """A 1 MiB bytea parameter comes back byte-exact; a query of 1,024 rows of 1 KiB
    (1 MiB of result) arrives whole; a cursor walks 10,000 rows in order."""

    async def main() -> None:
        conn = await pg_connect(asyncpg, postgres)
        try:
            blob = os.urandom(MIB)
            assert await conn.fetchval("SELECT $1::bytea", blob) == blob
            result = await conn.fetch(
                "SELECT i, repeat(chr(65 + i % 26), 1024) AS s FROM generate_series(0, 1023) i"
            )
            assert [r["i"] for r in result] == list(range(1024))
            assert all(r["s"] == chr(65 + r["i"] % 26) * 1024 for r in result)
            assert sum(len(r["s"]) for r in result) == MIB
            seen = []
            async with conn.transaction():
                cur = conn.cursor("SELECT i FROM generate_series(1, 10000) i", prefetch=500)
                async for record in cur:
                    seen.append(record["i"])
            assert seen == list(range(1, 10001))
        finally:
            await conn.close(timeout=10)

    run_on_ats_loop(main)


def test_asyncpg_pool(postgres: RealServer, asyncpg: Any) -> None:
    """``asyncpg.create_pool`` (2 to 5 connections): 30 concurrent queries, each waiting a
    little on the server, all answered right, on more than one backend (they overlapped);
    the pool closes cleanly."""

    async def query(pool: Any, i: int) -> tuple[int, int]:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT pg_sleep(0.02), $1::int * 2 AS v, pg_backend_pid()", i
            )
            return row["v"], row["pg_backend_pid"]

    async def main() -> None:
        pool = await asyncpg.create_pool(postgres.info["dsn"], min_size=2, max_size=5, timeout=10)
        try:
            results = await asyncio.gather(*(query(pool, i) for i in range(30)))
            assert [v for v, _ in results] == [2 * i for i in range(30)]
            backends = {pid for _, pid in results}
            assert 2 <= len(backends) <= 5, backends
            assert pool.get_size() <= 5
        finally:
            await asyncio.wait_for(pool.close(), 10)

    run_on_ats_loop(main)


def test_asyncpg_listen_notify(postgres: RealServer, asyncpg: Any) -> None:
    """LISTEN on one connection, NOTIFY from another: every payload delivered, in order,
    with the notifier's pid; after ``remove_listener`` nothing more arrives."""

    async def main() -> None:
        listener = await pg_connect(asyncpg, postgres)
        notifier = await pg_connect(asyncpg, postgres)
        got: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            got.put_nowait((pid, channel, payload))

        try:
            await listener.add_listener("ats_chan", on_notify)
            await notifier.execute("NOTIFY ats_chan, 'hello'")
            for i in range(10):
                await notifier.execute("SELECT pg_notify('ats_chan', $1)", f"msg-{i}")
            pid = notifier.get_server_pid()
            received = [await asyncio.wait_for(got.get(), 10) for _ in range(11)]
            expected = [(pid, "ats_chan", p) for p in ["hello"] + [f"msg-{i}" for i in range(10)]]
            assert received == expected
            await listener.remove_listener("ats_chan", on_notify)
            await notifier.execute("NOTIFY ats_chan, 'late'")
            assert await listener.fetchval("SELECT 1") == 1  # a round trip after the NOTIFY
            assert got.empty()
        finally:
            await listener.close(timeout=10)
            await notifier.close(timeout=10)

    run_on_ats_loop(main)


def test_asyncpg_tls(postgres: RealServer, asyncpg: Any) -> None:
    """asyncpg over TLS (PostgreSQL's SSLRequest, then ``loop.start_tls`` on the loop's
    transport), the certificate verified: the server sees the session encrypted, and a
    1 MiB value and 1,000 rows cross it intact."""
    cert = postgres.info["ssl_cert"]
    if cert is None:
        pytest.skip("the openssl command is not installed: no certificate for TLS")

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=str(cert))
        dsn = postgres.info["dsn"].replace("?sslmode=disable", "")
        conn = await asyncpg.connect(dsn, ssl=ctx, timeout=10, command_timeout=20)
        try:
            encrypted = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            assert await conn.fetchval(encrypted) is True
            blob = os.urandom(MIB)
            assert await conn.fetchval("SELECT $1::bytea", blob) == blob
            result = await conn.fetch("SELECT i, md5(i::text) FROM generate_series(1, 1000) i")
            assert [r["i"] for r in result] == list(range(1, 1001))
        finally:
            await conn.close(timeout=10)
        assert conn.is_closed()

    run_on_ats_loop(main)


# --------------------------------------------------------------------------- redis


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RealServer]:
    """A redis-server of its own for this module (no persistence)."""
    if redis_binary() is None:
        pytest.skip("redis-server not found on PATH (apt-get install redis-server)")
    with redis_server() as server:
        yield server


@pytest.fixture
def aioredis() -> Any:
    return pytest.importorskip("redis.asyncio")


def test_redis_commands(redis_srv: RealServer, aioredis: Any) -> None:
    """SET/GET, a 1 MiB value byte-exact, INCR, an expiry; then a clean close."""

    async def main() -> None:
        r = aioredis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=10)
        try:
            assert await r.ping() is True
            assert await r.set("cmd:greeting", "hello") is True
            assert await r.get("cmd:greeting") == b"hello"
            assert await r.get("cmd:missing") is None
            blob = os.urandom(MIB)
            assert await r.set("cmd:blob", blob) is True
            assert await r.strlen("cmd:blob") == MIB
            assert await r.get("cmd:blob") == blob
            assert [await r.incr("cmd:counter") for _ in range(5)] == [1, 2, 3, 4, 5]
            await r.set("cmd:short", "x", ex=100)
            assert 0 < await r.ttl("cmd:short") <= 100
            assert await r.delete("cmd:greeting", "cmd:blob", "cmd:counter", "cmd:short") == 4
        finally:
            await r.aclose()

    run_on_ats_loop(main)


def test_redis_pipeline(redis_srv: RealServer, aioredis: Any) -> None:
    """A pipeline of 1,000 commands (500 SETs, 500 GETs) in one round trip, every reply
    right; and a MULTI/EXEC transaction."""

    async def main() -> None:
        r = aioredis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=10)
        try:
            async with r.pipeline(transaction=False) as pipe:
                for i in range(500):
                    pipe.set(f"pipe:{i}", f"value-{i}" * (i % 7 + 1))
                for i in range(500):
                    pipe.get(f"pipe:{i}")
                replies = await pipe.execute()
            assert len(replies) == 1000
            assert replies[:500] == [True] * 500
            assert replies[500:] == [f"value-{i}".encode() * (i % 7 + 1) for i in range(500)]
            async with r.pipeline(transaction=True) as tx:
                tx.incrby("pipe:tx", 10).incrby("pipe:tx", 5).get("pipe:tx")
                assert await tx.execute() == [10, 15, b"15"]
            assert await r.delete(*[f"pipe:{i}" for i in range(500)], "pipe:tx") == 501
        finally:
            await r.aclose()

    run_on_ats_loop(main)


async def next_message(pubsub: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next pub/sub message (subscription confirmations skipped)."""

    async def wait() -> dict[str, Any]:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                return msg  # type: ignore[no-any-return]

    return await asyncio.wait_for(wait(), timeout)


def test_redis_pubsub(redis_srv: RealServer, aioredis: Any) -> None:
    """SUBSCRIBE and PSUBSCRIBE on one connection, PUBLISH from another: the publisher hears
    how many received it, and the messages arrive with their channel and pattern."""

    async def main() -> None:
        sub = aioredis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=10)
        pub = aioredis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=10)
        pubsub = sub.pubsub()
        try:
            await pubsub.subscribe("ps:news")
            await pubsub.psubscribe("ps:weather.*")
            assert await pub.publish("ps:news", "first") == 1
            msg = await next_message(pubsub)
            assert (msg["type"], msg["channel"], msg["data"]) == ("message", b"ps:news", b"first")
            assert await pub.publish("ps:weather.paris", b"\x00rain\xff") == 1
            msg = await next_message(pubsub)
            assert (msg["type"], msg["pattern"]) == ("pmessage", b"ps:weather.*")
            assert (msg["channel"], msg["data"]) == (b"ps:weather.paris", b"\x00rain\xff")
            assert await pub.publish("ps:other", "nobody") == 0
            await pubsub.unsubscribe("ps:news")
            await pubsub.punsubscribe("ps:weather.*")
        finally:
            await pubsub.aclose()
            await sub.aclose()
            await pub.aclose()

    run_on_ats_loop(main)


def test_redis_pool_concurrent(redis_srv: RealServer, aioredis: Any) -> None:
    """A blocking pool of up to 5 connections shared by 50 concurrent tasks (each INCR a
    shared counter, SET and GET its own key): every answer right, the counter at 50, and
    redis saw several (at most 5) connections of the pool."""

    async def task(r: Any, i: int) -> bytes:
        await r.incr("pool:counter")
        await r.set(f"pool:{i}", f"task-{i}")
        return await r.get(f"pool:{i}")  # type: ignore[no-any-return]

    async def main() -> None:
        pool = aioredis.BlockingConnectionPool(
            host="127.0.0.1",
            port=redis_srv.port,
            max_connections=5,
            timeout=10,
            client_name="ats-pool",
        )
        r = aioredis.Redis(connection_pool=pool)
        try:
            got = await asyncio.gather(*(task(r, i) for i in range(50)))
            assert got == [f"task-{i}".encode() for i in range(50)]
            assert await r.get("pool:counter") == b"50"
            clients = await r.client_list()
            ours = [c for c in clients if c.get("name") == "ats-pool"]
            assert 2 <= len(ours) <= 5, ours
            assert await r.delete("pool:counter", *[f"pool:{i}" for i in range(50)]) == 51
        finally:
            await r.aclose()
            await pool.aclose()

    run_on_ats_loop(main)
