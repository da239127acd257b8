"""An AXI4 manager for amaranth.sim testbenches: bursts with random idle cycles and stalls."""

import random


async def put(ctx, channel, rng: random.Random, idle_prob: float, **fields):
    """Drive one beat on an AXI channel the testbench is the source of (AW, W, AR), after
    random idle cycles; returns just after the edge that moved it."""
    while rng.random() < idle_prob:
        await ctx.tick()
    for name, value in fields.items():
        ctx.set(getattr(channel, name), value)
    ctx.set(channel.valid, 1)
    await ctx.tick().until(channel.ready)
    ctx.set(channel.valid, 0)


async def get(ctx, channel, rng: random.Random, stall_prob: float, *names):
    """Take one beat from a channel the design is the source of (R, B), withholding ``ready``
    at random; the named fields as sampled at the edge that moved it."""
    while True:
        ready = rng.random() >= stall_prob
        ctx.set(channel.ready, ready)
        sampled = await ctx.tick().sample(channel.valid, *(getattr(channel, n) for n in names))
        valid, values = sampled[-1 - len(names)], list(sampled[len(sampled) - len(names):])
        if ready and valid:
            ctx.set(channel.ready, 0)
            return values


async def burst_coroutine(ctx, port, bursts, bytes_per_beat, rng, stall_prob, reads, writes,
                          *, read_id=5, write_id=3):
    """Run ``bursts`` on an AXI port: ``("w", beat, data, strobes)`` or ``("r", beat, beats)``.
    Appends each read's beats ``[data, resp, last, id]`` to ``reads`` and each write's
    ``[resp, id]`` to ``writes``."""
    size = bytes_per_beat.bit_length() - 1
    for burst in bursts:
        if burst[0] == "w":
            _, beat, data, strobes = burst
            await put(ctx, port.aw, rng, stall_prob, addr=beat * bytes_per_beat,
                      len=len(data) - 1, size=size, burst=1, id=write_id)
            for i, (d, s) in enumerate(zip(data, strobes)):
                await put(ctx, port.w, rng, stall_prob, data=d, strb=s,
                          last=int(i == len(data) - 1))
            writes.append(await get(ctx, port.b, rng, stall_prob, "resp", "id"))
        else:
            _, beat, beats = burst
            await put(ctx, port.ar, rng, stall_prob, addr=beat * bytes_per_beat, len=beats - 1,
                      size=size, burst=1, id=read_id)
            reads.append([await get(ctx, port.r, rng, stall_prob, "data", "resp", "last", "id")
                          for _ in range(beats)])
