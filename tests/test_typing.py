"""A user's type checker sees fastconsumer's real types: mistakes in calling it are reported, not ``Any``."""

import textwrap

from mypy import api

USER_CODE = textwrap.dedent(
    """
    from confluent_kafka import Message

    import fastconsumer
    from fastconsumer import Consumer, MemorySource, Outcome


    async def handle(msg: Message) -> None:
        pass


    async def policy(messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        return Outcome.SKIPPED


    consumer = Consumer(MemorySource(), handle, concurrency="8")
    reveal_type(Consumer(MemorySource(), handle, on_error=policy))
    reveal_type(consumer.stats.handled)
    reveal_type(fastconsumer.Settings().cap)
    Consumer(MemorySource(), handle, ordering="fifo")
    """
)


def test_a_users_mypy_sees_the_api(tmp_path):
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    out, err, status = api.run(
        [str(path), "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy_cache")]
    )
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(str(path))]
    assert status == 1, out + err
    assert (
        'error: Argument "concurrency" to "Consumer" has incompatible type "str"; expected "int"  [arg-type]'
        in lines
    ), out
    assert 'note: Revealed type is "fastconsumer.engine.consumer.Consumer"' in lines, out
    assert (
        lines.count('note: Revealed type is "int"') + lines.count('note: Revealed type is "builtins.int"')
        == 2
    )
    assert any(line.startswith('error: Argument "ordering" to "Consumer"') for line in lines), out
    assert len([line for line in lines if line.startswith("error:")]) == 2, out
