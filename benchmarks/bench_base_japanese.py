"""Does a base model answer in Japanese? Twenty short factual questions, greedy, through llama.cpp.

Each embedded base (its shipped GGUF: SmolLM2 Q4_1, Gemma 3 270M Q4_K_M) answers every question in
two forms: its chat template (what ``so8t run`` and the A/B send) and a plain completion prompt
("質問: …\\n答え:", what a pretrained model continues best). Scored: the answer contains an accepted
string (first line, up to 48 tokens), the share of Japanese script (kana and kanji) among the
answer's letters, and seconds per answer. The questions were written for this benchmark.

    python benchmarks/bench_base_japanese.py --bases smollm2,gemma3-270m --json benchmarks/results_base_japanese.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("日本の首都はどこですか？", ("東京",)),
    ("フランスの首都はどこですか？", ("パリ",)),
    ("イギリスの首都はどこですか？", ("ロンドン",)),
    ("中国の首都はどこですか？", ("北京",)),
    ("アメリカの首都はどこですか？", ("ワシントン",)),
    ("日本で一番高い山は何ですか？", ("富士山",)),
    ("富士山は何県にありますか？", ("静岡", "山梨")),
    ("日本の通貨は何ですか？", ("円",)),
    ("一年は何か月ですか？", ("12", "十二", "１２")),
    ("一週間は何日ですか？", ("7", "七", "７")),
    ("一日は何時間ですか？", ("24", "二十四", "２４")),
    ("1足す1はいくつですか？", ("2", "二", "２")),
    ("水の化学式は何ですか？", ("H2O", "H₂O", "Ｈ２Ｏ")),
    ("太陽系で一番大きい惑星は何ですか？", ("木星",)),
    ("氷が溶けると何になりますか？", ("水",)),
    ("地球は太陽の周りを約何日で一周しますか？", ("365", "３６５")),
    ("「犬」は英語で何と言いますか？", ("dog", "Dog")),
    ("英語で「ありがとう」は何と言いますか？", ("thank", "Thank")),
    ("虹は何色ですか？", ("7", "七", "７")),
    ("日本の国技は何ですか？", ("相撲",)),
]

_JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uff66-\uff9f]")
_LETTER = re.compile(r"\w")


def japanese_share(text: str) -> float:
    letters = _LETTER.findall(text)
    return sum(1 for c in letters if _JA.match(c)) / len(letters) if letters else 0.0


def run_base(name: str, threads: int) -> dict:
    from llama_cpp import Llama

    from so8t.llama import configure_llama_cpp

    configure_llama_cpp()

    from so8t.base_models import embedded_gguf
    from so8t.chat_template import render_chat
    from so8t.serving.inference import read_chat_info

    path = embedded_gguf(name)
    info = read_chat_info(path)
    template = info.chat_template
    if not template:
        from so8t.base_models import EMBEDDED

        template = EMBEDDED[name].chat_template
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
    rows = []
    for form in ("chat", "plain"):
        for q, accepted in QUESTIONS:
            prompt = (render_chat(template, [{"role": "user", "content": q}], bos_token=info.bos_token,
                                  eos_token=info.eos_token) if form == "chat" else f"質問: {q}\n答え:")
            printed_bos = bool(info.bos_token) and prompt.startswith(info.bos_token)
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=not printed_bos, special=True)
            t0 = time.time()
            out = []
            for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                if llm.token_is_eog(tok) if hasattr(llm, "token_is_eog") else tok == llm.token_eos():
                    break
                out.append(tok)
                if len(out) >= 48:
                    break
            text = llm.detokenize(out).decode("utf-8", errors="replace")
            text = text.replace("<end_of_turn>", "").strip().split("\n")[0]
            rows.append({"form": form, "question": q, "answer": text, "correct": any(a in text for a in accepted),
                         "japanese_share": japanese_share(text), "seconds": time.time() - t0})
    summary = {form: {"accuracy": sum(r["correct"] for r in rows if r["form"] == form) / len(QUESTIONS),
                      "japanese_share": sum(r["japanese_share"] for r in rows if r["form"] == form) / len(QUESTIONS),
                      "seconds_per_answer": sum(r["seconds"] for r in rows if r["form"] == form) / len(QUESTIONS)}
               for form in ("chat", "plain")}
    return {"base": name, "gguf": path.name, "summary": summary, "answers": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", default="smollm2,gemma3-270m", help="Comma-separated embedded base models.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads.")
    ap.add_argument("--json", type=Path, default=None, help="Write every answer and the summary here.")
    args = ap.parse_args()
    results = [run_base(b.strip(), args.threads) for b in args.bases.split(",") if b.strip()]
    print("| base | prompt | accuracy | Japanese share | s/answer |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        for form, s in r["summary"].items():
            print(f"| {r['base']} | {form} | {s['accuracy']:.2f} | {s['japanese_share']:.2f} | {s['seconds_per_answer']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "loadavg": os.getloadavg()}, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
