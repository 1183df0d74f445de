"""Downloader throughput (images/s) against a local HTTP server in another process.

Serves 500x375 JPEGs (about the size of a web image) from 127.0.0.1; the downloader fetches, applies
the paper's image filter, resizes to 256 and writes WebDataset shards.
Usage: python benchmarks/data_download.py [--n 2000 --processes 2 --threads 16]
Writes benchmarks/results/data_download.json.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import tempfile

from wukong_hf.data.download import DownloadConfig, download_images


def serve(port_queue) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray((rng.random((375, 500, 3)) * 64 + rng.integers(0, 190)).astype("uint8")).save(buf, "JPEG", quality=85)
        bodies.append(buf.getvalue())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = bodies[hash(self.path) % len(bodies)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(queue,), daemon=True)
    server.start()
    try:
        port = queue.get(timeout=30)
        rows = [{"url": f"http://127.0.0.1:{port}/img/{i}.jpg", "caption": f"图片{i}"} for i in range(args.n)]
        with tempfile.TemporaryDirectory() as tmp:
            config = DownloadConfig(shard_size=250, processes=args.processes, threads=args.threads)
            report = download_images(rows, tmp, config, progress=False)
    finally:
        server.terminate()
        server.join()
    result = {
        "machine": "2-core CPU sandbox, no GPU (shared with other jobs; the HTTP server runs on the same 2 cores)",
        "images": args.n, "processes": args.processes, "threads_per_process": args.threads,
        "seconds": round(report.seconds, 2), "images_per_s": round(report.total / report.seconds, 1),
        "kept": report.kept, "failures": dict(report.failures),
    }
    print(f"{'images':>8s} {'processes':>9s} {'threads':>7s} {'seconds':>8s} {'images/s':>9s} {'kept':>6s}")
    print(f"{args.n:8d} {args.processes:9d} {args.threads:7d} {result['seconds']:8.2f} {result['images_per_s']:9.1f} {report.kept:6d}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "data_download.json"), "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
