"""Drive the node in a REAL ComfyUI server over its HTTP API (not run by pytest; see README, "Python API and
ComfyUI"): LoadVideo → GetVideoComponents → Robust Video Matting → CreateVideo → SaveVideo, then a cancelled
run (POST /interrupt) and an unload (POST /free). Prints what the server reported, as JSON.

    python tests/comfyui/comfy_standin/real_server.py --url http://127.0.0.1:8188 --video carphone_pristine.mp4

Needs aiohttp (ComfyUI's own requirement: run it with ComfyUI's Python) and psutil for the memory figure
when the server runs on this machine (``--pid``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
import uuid

import aiohttp

NODE = "3"  # the matting node's id in the workflow below
TEXT_EVENT = 3  # ComfyUI's BinaryEventTypes.TEXT: text shown on a node


def workflow(video: str, *, backbone: str, fp16: bool, bg_color: str, batch_size: int) -> dict:
    """The API-format workflow: ids are strings, links are [node id, output index]."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        NODE: {"class_type": "Robust Video Matting",
               "inputs": {"video_frames": ["2", 0], "backbone": backbone, "fp16": fp16, "bg_color": bg_color,
                          "batch_size": batch_size, "downsample_ratio": 0.0, "threshold": 0.0, "weights": "auto"}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": [NODE, 0], "fps": ["2", 2]}},
        "5": {"class_type": "SaveVideo",
              "inputs": {"video": ["4", 0], "filename_prefix": "rvm/matted", "format": "auto", "codec": "auto"}},
    }


async def run_prompt(session: aiohttp.ClientSession, url: str, prompt: dict, *,
                     interrupt_after: int | None = None) -> dict:
    """Queue ``prompt`` and follow it on /ws until it ends; optionally POST /interrupt after that many
    progress events of the matting node."""
    client_id = uuid.uuid4().hex
    seen: dict = {"progress": [], "texts": [], "end": None}
    async with session.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0) as ws:
        async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"POST /prompt refused: {json.dumps(answer)}")
        prompt_id, start, interrupted_at = answer["prompt_id"], time.monotonic(), None
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                if struct.unpack(">I", msg.data[:4])[0] == TEXT_EVENT:
                    size = struct.unpack(">I", msg.data[4:8])[0]
                    seen["texts"].append((msg.data[8:8 + size].decode(), msg.data[8 + size:].decode()))
                continue
            event = json.loads(msg.data)
            kind, data = event["type"], event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and data.get("node") == NODE:
                seen["progress"].append([data["value"], data["max"], round(time.monotonic() - start, 2)])
                if interrupt_after and len(seen["progress"]) == interrupt_after and interrupted_at is None:
                    await session.post(f"{url}/interrupt")
                    interrupted_at = time.monotonic()
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                seen["end"] = kind
                if kind == "execution_error":
                    seen["error"] = data.get("exception_message")
                break
        seen["seconds"] = round(time.monotonic() - start, 2)
        if interrupted_at is not None:
            seen["interrupt_to_stop_s"] = round(time.monotonic() - interrupted_at, 2)
    async with session.get(f"{url}/history/{prompt_id}") as resp:
        outputs = (await resp.json()).get(prompt_id, {}).get("outputs", {})
    seen["outputs"] = outputs.get("5")
    return seen


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--video", default="carphone_pristine.mp4", help="a file in ComfyUI/input")
    parser.add_argument("--backbone", default="mobilenetv3")
    parser.add_argument("--pid", type=int, help="the server's pid, for its memory before and after /free")
    args = parser.parse_args()
    report: dict = {}
    async with aiohttp.ClientSession() as session:
        settings = {"backbone": args.backbone, "fp16": True, "bg_color": "green", "batch_size": 4}
        report["run"] = await run_prompt(session, args.url, workflow(args.video, **settings))
        # a different colour makes ComfyUI run the node again; batch 1 gives many chances to stop
        settings.update(bg_color="blue", batch_size=1)
        report["cancel"] = await run_prompt(session, args.url, workflow(args.video, **settings), interrupt_after=3)
        # ComfyUI's worker reads the /free flags when it wakes: sent while it is still finishing the
        # cancelled prompt, they would wait for the next prompt (seen with 0.3.64)
        await asyncio.sleep(3)
        report["rss_mib"] = {"before": rss_mib(args.pid)}
        # the UI's "Unload models" (the model only), then "Free model and node cache" (cached outputs too)
        for flag in ("unload_models", "free_memory"):
            async with session.post(f"{args.url}/free", json={flag: True}):
                pass
            await asyncio.sleep(12)  # the worker applies the flag, then collects garbage within 10 s
            report["rss_mib"][f"after {flag}"] = rss_mib(args.pid)
        settings.update(bg_color="white", batch_size=4)
        report["after_free"] = await run_prompt(session, args.url, workflow(args.video, **settings))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
