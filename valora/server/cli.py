"""``valora-serve`` / ``benchmarks/launch_server.py``: build the engine, print what is served,
run the OpenAI-compatible server under uvicorn.

    valora-serve --model-setting tiny --num-adapter 4 --port 8000
    valora-serve --model /ckpt/qwen2-vl-7b --lora-modules sql=/adapters/sql --api-key KEY
"""

from __future__ import annotations

import argparse

from valora.cli_fields import add_cli_args, from_cli, key_value_pairs
from valora.config import EngineConfig, LoRAConfig, SchedulerConfig


def add_model_args(p: argparse.ArgumentParser) -> None:
    """What is served and where: model, name, host, port, key."""
    p.add_argument("--model", help="checkpoint directory or model setting (default: the setting)")
    p.add_argument("--model-setting", default="tiny", help="tiny | qwen2-vl-2b | qwen2-vl-7b")
    p.add_argument("--dummy", action="store_true", help="dummy weights from --model-setting")
    p.add_argument("--served-model-name", help="the base model's name in the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on every route but /health"
    )


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """EngineConfig / SchedulerConfig fields, with the prefix-caching alias and warm-up."""
    add_cli_args(EngineConfig, p.add_argument_group("engine"))
    p.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="the same as --no-enable-prefix-caching",
    )
    p.add_argument(
        "--warmup",
        default="auto",
        choices=["auto", "on", "off"],
        help="run warm-up requests before serving (auto: on a GPU, where kernels "
        "compile on first use)",
    )
    add_cli_args(SchedulerConfig, p.add_argument_group("scheduler"))


def add_lora_args(p: argparse.ArgumentParser) -> None:
    lora = p.add_argument_group("LoRA")
    add_cli_args(LoRAConfig, lora)
    lora.add_argument("--num-adapter", type=int, default=0, help="dummy adapters lora0..loraN-1")
    lora.add_argument("--dummy-ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    lora.add_argument(
        "--dummy-task-classes",
        type=int,
        default=0,
        help="give every dummy adapter a random task head of this many classes (/classify)",
    )
    lora.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH")
    lora.add_argument("--enable-lora", action="store_true", help="LoRA on even with no adapter yet")
    lora.add_argument("--lora-root", help="runtime adapter loads only from under this directory")


def add_request_args(p: argparse.ArgumentParser) -> None:
    """Per-request limits: media, pending requests, body size, docs, shutdown."""
    p.add_argument("--allowed-local-media-path", help="media files allowed from under here")
    p.add_argument(
        "--allow-remote-media", action="store_true", help="fetch http(s) images and videos"
    )
    p.add_argument("--max-images-per-request", type=int, default=8)
    p.add_argument("--max-videos-per-request", type=int, default=2)
    p.add_argument("--max-video-bytes", type=int, default=64 << 20, help="encoded video size")
    p.add_argument("--max-video-duration-s", type=float, default=600.0)
    p.add_argument(
        "--max-video-frame-pixels",
        type=int,
        default=1920 * 1088,
        help="videos whose stream header says larger frames are refused before decoding",
    )
    p.add_argument(
        "--max-video-frames", type=int, default=128, help="frames kept per video after sampling"
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=32 << 20,
        help="images whose header says more pixels are refused before decoding",
    )
    p.add_argument("--max-pending", type=int, default=1024, help="in-flight requests before 503")
    p.add_argument(
        "--max-request-body-bytes", type=int, default=32 << 20, help="larger request bodies get 413"
    )
    p.add_argument(
        "--disable-fastapi-docs",
        action="store_true",
        help="no /docs, /redoc, /openapi.json (with --api-key they need the key)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM: seconds in-flight requests get to finish before they are "
        "aborted (new requests get 503 meanwhile)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    add_engine_args(p)
    add_lora_args(p)
    add_request_args(p)
    return p


def lora_modules(items: list[str]) -> dict[str, str]:
    return dict(key_value_pairs(items, "--lora-modules", "NAME=PATH"))


def engine_config_from(args: argparse.Namespace) -> EngineConfig:
    model = args.model_setting if args.dummy or not args.model else args.model
    enable_lora = args.enable_lora or bool(args.lora_modules) or args.num_adapter > 0
    lora = from_cli(LoRAConfig, args) if enable_lora else None
    return from_cli(
        EngineConfig, args, model=model, scheduler=from_cli(SchedulerConfig, args), lora=lora
    )


def build_server(args: argparse.Namespace):
    """-> (app, engine, served name)."""
    from valora.adapters.peft_loader import dummy_ranks
    from valora.engine import build_engine
    from valora.server.api_server import ServerConfig, build_app
    from valora.server.media import MediaPolicy

    config = engine_config_from(args)
    modules = lora_modules(args.lora_modules)  # a malformed flag fails before the model loads
    model = config.model
    engine = build_engine(config)
    for name, path in modules.items():
        engine.load_adapter(name, path)
    for i, rank in enumerate(dummy_ranks(args.num_adapter, args.dummy_ranks)):
        engine.load_dummy_adapter(
            f"lora{i}", rank, seed=config.seed + 1 + i, num_classes=args.dummy_task_classes
        )
    if args.warmup == "on" or (args.warmup == "auto" and engine.config.on_gpu):
        from valora.engine.warmup import warmup

        report = warmup(engine)
        print(
            f"warm-up: {report.seconds:.1f} s ({report.kernel_configs} kernel configs "
            f"compiled in {report.compile_seconds:.1f} s)",
            flush=True,
        )
    name = args.served_model_name or model
    media = MediaPolicy(
        args.allowed_local_media_path,
        args.allow_remote_media,
        max_image_pixels=args.max_image_pixels,
        max_images_per_request=args.max_images_per_request,
        max_videos_per_request=args.max_videos_per_request,
        max_video_bytes=args.max_video_bytes,
        max_video_duration_s=args.max_video_duration_s,
        max_video_frame_pixels=args.max_video_frame_pixels,
        max_video_frames=args.max_video_frames,
    )
    server_config = ServerConfig(
        name,
        model,
        args.api_key,
        media,
        args.max_pending,
        args.lora_root,
        max_request_body_bytes=args.max_request_body_bytes,
        enable_docs=not args.disable_fastapi_docs,
    )
    return build_app(engine, server_config), engine, name


def draining_server(app, host: str, port: int, shutdown_timeout: float, **kwargs):
    """A uvicorn server that drains on SIGTERM / SIGINT: new requests get 503 at once, requests
    in flight get ``shutdown_timeout`` seconds to finish (then they are aborted), and the
    process exits. A second signal exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.runner.drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=shutdown_timeout, **kwargs
    )
    return DrainingServer(config)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    app, engine, name = build_server(args)
    adapters = list(engine.adapters())
    print(f"serving {name!r} at http://{args.host}:{args.port}/v1 (policy {args.policy})")
    print(f"adapters ({len(adapters)}): {', '.join(adapters) or 'none'}", flush=True)
    server = draining_server(app, args.host, args.port, args.shutdown_timeout, log_level="warning")
    server.run()


if __name__ == "__main__":
    main()
