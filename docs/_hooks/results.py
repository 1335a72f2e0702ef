"""MkDocs hook: the benchmark results the pages link to (``../benchmarks/results/...``) become site files.

The markdown pages link to plots and JSON in ``benchmarks/results/`` so that
they read well on a repository browser; the site serves the same files under
``results/``, and a link to a result that does not exist still fails the
strict build (the link is rewritten to a path MkDocs checks).
"""
from __future__ import annotations

import os
import re

from mkdocs.structure.files import File, Files

_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "benchmarks", "results")
_LINK = re.compile(r"\]\(\.\./benchmarks/results/")


def on_files(files: Files, config) -> Files:
    for root, _, names in os.walk(_RESULTS):
        for name in names:
            if name.endswith((".png", ".json")):
                rel = os.path.relpath(os.path.join(root, name), _RESULTS)
                files.append(File(f"results/{rel}", src_dir=os.path.dirname(_RESULTS), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    depth = page.file.src_uri.count("/")
    return _LINK.sub("](" + "../" * depth + "results/", markdown)
