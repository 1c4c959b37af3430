"""Launch the server with VaLoRA's flags (same as ``valora-serve``), e.g.

    python benchmarks/launch_server.py --model-setting qwen2-vl-7b --dummy --num-adapter 16 \
        --num-token 30000 --scheduler valora --port 8085
"""

from __future__ import annotations

from valora.server.cli import main

if __name__ == "__main__":
    main()
