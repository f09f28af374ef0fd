#!/usr/bin/env bash
# Reproduce arXiv 2408.10536 (hybrid batch training) with multilingual-e5-small, offline, on CPU.
#
#   train: XQuAD-R articles 0:36 in the paper's 9 training languages (ar de en es hi ru th tr zh;
#          el and vi stay unseen) with X-X-mono (--strategy mono), X-Y (cross) and Hybrid
#          (alpha 0.5) batches: same steps, same seeds; plus the untrained model
#   eval:  XQuAD-R articles 36:48 (11 languages), MLQA-R (7 languages, never trained on), both
#          with the exact full-pool LAReQA protocol; MIRACL-mini (18 languages, monolingual
#          nDCG@10 / P@10 / Recall@100); paired randomization tests Hybrid vs each baseline;
#          an alpha sweep (0 .25 .5 .75 1, one seed, XQuAD-R)
#
# Phases run in the order PHASES lists them (default: most important first, so that a partial
# run already answers the main question):
#   1 data   2 untrained + first seed of each strategy on XQuAD-R (+ significance)
#   4 the other seeds on XQuAD-R   5 alpha sweep   3 the first four models on MLQA-R
#   6 the other seeds on MLQA-R   7 MIRACL-mini (the last two are the expensive ones)
# Every result that already exists is skipped, so an interrupted run continues where it stopped
# (training resumes from its last checkpoint). Each command's wall time is appended to
# $RESULTS/timings.jsonl as {"step": ..., "seconds": ..., "cpu_seconds": ...} (CPU time, user +
# system: what the command cost even when other jobs shared the machine or the run was paused).
# Then: python examples/make_report.py
#
# Environment: RESULTS (default results/paper), STEPS (default 40), BATCH (default 32; the
# paper's is 100, too slow on 2 CPU cores), SEEDS (default "0 1 2"), ALPHAS (default
# "0 0.25 0.5 0.75 1"), MIRACL_LANGS (default: all 18), PHASES (default "1 2 4 5 3 6 7"),
# MODEL (default multilingual-e5-small), TEMPERATURE (InfoNCE tau, default 0.01 = mE5's own), SHARED (default ../shared, holding data/),
# LAREQA_FIELDS (candidate text for hbt-encode --fields: default lareqa = sentence + paragraph),
# TRAIN_POSITIVE (hbt-prepare pairs --positive: default sentence+context, the candidates' text).
# SMOKE=1 shrinks everything (3 steps of 4, 2 articles, 2 seeds, 3 alphas, sentence-only
# candidates, 2 MIRACL languages
# with their judged passages and 300 more) to test the whole script in a few minutes; its results are not results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${SHARED:-$here/../../shared}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

train_langs=ar,de,en,es,hi,ru,th,tr,zh
smoke="${SMOKE:-0}"
if [ "$smoke" = 1 ]; then
  results="${RESULTS:-results/smoke}"
  steps="${STEPS:-3}"; batch="${BATCH:-4}"; seeds="${SEEDS:-0 1}"; alphas="${ALPHAS:-0 0.5 1}"
  miracl_langs="${MIRACL_LANGS:-de sw}"
  train_articles=0:2; xquad_articles=36:37; mlqa_articles=0:1; miracl_passages=300
  lareqa_fields="${LAREQA_FIELDS:-sentence}"
  train_positive="${TRAIN_POSITIVE:-sentence}"
else
  results="${RESULTS:-results/paper}"
  steps="${STEPS:-40}"; batch="${BATCH:-32}"; seeds="${SEEDS:-0 1 2}"
  alphas="${ALPHAS:-0 0.25 0.5 0.75 1}"
  miracl_langs="${MIRACL_LANGS:-ar bn de en es fa fi fr hi id ja ko ru sw te th yo zh}"
  train_articles=0:36; xquad_articles=36:48; mlqa_articles=0:; miracl_passages=
  lareqa_fields="${LAREQA_FIELDS:-lareqa}"
  train_positive="${TRAIN_POSITIVE:-sentence+context}"
fi
model="${MODEL:-multilingual-e5-small}"
# mE5 was trained with temperature 0.01; at hbt-train's default 0.05, 40 hybrid steps cost
# mono mAP (XQuAD-R 36:48: -0.021 vs untrained) where 0.01 gains (+0.023), measured 2026-11-25.
temperature="${TEMPERATURE:-0.01}"
phases="${PHASES:-1 2 4 5 3 6 7}"
first_seed="${seeds%% *}"
warmup=$(( steps / 10 ))
mkdir -p "$results"/{data,models,embeddings,scores,significance}

log() { echo "== $*" >&2; }

children_cpu() {  # children_cpu VAR: VAR = "USER SYSTEM" CPU time of this shell's finished children
  # The builtin in this shell, no $(...): a subshell would report its own (zero) children.
  times > "$results/.times"
  { read -r _; read -r "$1"; } < "$results/.times"
}

timed() {  # timed STEP COMMAND...: run it, append {"step", "seconds", "cpu_seconds"} to timings.jsonl
  local step="$1" started ended cpu_before cpu_after
  shift
  children_cpu cpu_before
  started=$(date +%s.%N)
  "$@"
  ended=$(date +%s.%N)
  children_cpu cpu_after
  awk -v step="$step" -v a="$started" -v b="$ended" -v before="$cpu_before" -v after="$cpu_after" '
    function seconds(times,   t, i, total) {  # "0m1.250s 0m0.100s" -> 1.35
      split(times, t, /[ ms]+/)
      for (i = 1; i <= 4; i++) total += (i % 2 ? 60 : 1) * t[i]
      return total
    }
    BEGIN { printf "{\"step\": \"%s\", \"seconds\": %.2f, \"cpu_seconds\": %.2f}\n", step, b - a,
            seconds(after) - seconds(before) }' >> "$results/timings.jsonl"
}

# The run's settings, for the report (rewritten each time: the latest invocation's).
cat > "$results/config.json" <<EOF
{"model": "$model", "steps": $steps, "batch": $batch, "warmup_steps": $warmup,
 "seeds": "$seeds", "alphas": "$alphas", "train_articles": "$train_articles",
 "train_langs": "$train_langs", "xquad_articles": "$xquad_articles",
 "mlqa_articles": "$mlqa_articles", "candidate_fields": "$lareqa_fields", "train_positive": "$train_positive", "temperature": "$temperature",
 "miracl_langs": "$miracl_langs", "smoke": $smoke,
 "commit": "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"}
EOF

# ---------------------------------------------------------------------------------------- data
prepare_miracl() {  # prepare_miracl LANG
  local d="$shared/data/miracl-mini" corpus="$shared/data/miracl-mini/corpus.$1.jsonl"
  if [ -n "$miracl_passages" ]; then
    # SMOKE: the judged passages plus the first $miracl_passages of the corpus
    awk -v first="$miracl_passages" 'NR == FNR { judged[$3] = 1; next }
      { match($0, /"docid": "[^"]*"/); id = substr($0, RSTART + 10, RLENGTH - 11) }
      FNR <= first || id in judged' "$d/qrels.dev-subset.$1.tsv" "$corpus" \
    | hbt-prepare miracl --topics "$d/topics.dev-subset.$1.tsv" \
      --qrels "$d/qrels.dev-subset.$1.tsv" --corpus - --lang "$1" -o "$results/data/miracl-mini/$1"
  else
    hbt-prepare miracl --topics "$d/topics.dev-subset.$1.tsv" --qrels "$d/qrels.dev-subset.$1.tsv" \
      --corpus "$corpus" --lang "$1" -o "$results/data/miracl-mini/$1"
  fi
}

phase_1() {
  log "phase 1: data"
  data="$results/data"
  [ -s "$data/pairs.jsonl" ] || timed prepare-pairs hbt-prepare pairs "$shared/data/xquad-r" \
    --langs "$train_langs" --articles "$train_articles" --positive "$train_positive" \
    -o "$data/pairs.jsonl"
  [ -s "$data/xquad-r/qrels.trec" ] || timed prepare-xquad-r hbt-prepare lareqa \
    "$shared/data/xquad-r" --articles "$xquad_articles" -o "$data/xquad-r"
  [ -s "$data/mlqa-r/qrels.trec" ] || timed prepare-mlqa-r hbt-prepare lareqa \
    "$shared/data/mlqa-r" --articles "$mlqa_articles" -o "$data/mlqa-r"
  for lang in $miracl_langs; do
    [ -s "$data/miracl-mini/$lang/corpus.jsonl" ] || timed "prepare-miracl-mini-$lang" prepare_miracl "$lang"
  done
}

# ------------------------------------------------------------------------------------ training
train() {  # train NAME STRATEGY ALPHA SEED: batches file, then hbt-train (resumes if cut short)
  local dir="$results/models/$1" resume=()
  [ -s "$dir/hbt_retrieval.json" ] && return 0
  mkdir -p "$dir"
  [ -s "$dir/batches.jsonl" ] || timed "batches-$1" hbt-make-batches "$results/data/pairs.jsonl" \
    --strategy "$2" --alpha "$3" --batch-size "$batch" --steps "$steps" --seed "$4" \
    -o "$dir/batches.jsonl"
  compgen -G "$dir/checkpoint-*" > /dev/null && resume=(--resume)
  log "train $1 ($2, alpha $3, seed $4): $steps steps of $batch"
  timed "train-$1" hbt-train --model "$model" --output "$dir" --seed "$4" \
    --temperature "$temperature" --warmup-steps "$warmup" --save-steps 20 --quiet \
    "${resume[@]}" "$dir/batches.jsonl"
}

model_path() {  # the model a system name stands for
  if [ "$1" = untrained ]; then echo "$model"; else echo "$results/models/$1"; fi
}

# ------------------------------------------------------------------------------------ evaluation
lareqa() {  # lareqa SYSTEM BENCH: encode the pools (candidates: $lareqa_fields), score them
  local out="$results/scores/$1/$2.json" emb="$results/embeddings/$1"
  [ -s "$out" ] && return 0
  mkdir -p "$emb" "$results/scores/$1"
  log "evaluate $1 on $2"
  [ -s "$emb/$2.queries.npy" ] || timed "encode-queries-$1-$2" hbt-encode \
    --model "$(model_path "$1")" --kind query "$results/data/$2/queries.jsonl" \
    -o "$emb/$2.queries.npy"
  [ -s "$emb/$2.corpus.npy" ] || timed "encode-corpus-$1-$2" hbt-encode \
    --model "$(model_path "$1")" --kind passage --fields "$lareqa_fields" "$results/data/$2/corpus.jsonl" \
    -o "$emb/$2.corpus.npy"
  timed "score-$1-$2" hbt-score --protocol lareqa --qrels "$results/data/$2/qrels.trec" \
    --queries "$emb/$2.queries.npy" --corpus "$emb/$2.corpus.npy" -o "$out"
}

significance() {  # significance BASELINE HYBRID BENCH: paired randomization test, a = baseline
  local out="$results/significance/$3/$2-vs-$1.json" a="$results/embeddings/$1/$3"
  local b="$results/embeddings/$2/$3"
  [ -s "$out" ] && return 0
  mkdir -p "$results/significance/$3"
  timed "compare-$2-vs-$1-$3" hbt-score --protocol lareqa --compare \
    --qrels "$results/data/$3/qrels.trec" --queries "$a.queries.npy" --corpus "$a.corpus.npy" \
    --queries "$b.queries.npy" --corpus "$b.corpus.npy" -o "$out"
}

pooled_significance() {  # pooled_significance BASELINE BENCH: Hybrid vs BASELINE over all seeds
  # One test stratified by seed (sign flips per seed and query) of the mean over seeds.
  local tag="s${seeds// /+}" args=() seed system
  local out="$results/significance/$2/hybrid-$tag-vs-$1-$tag.json"
  [ -s "$out" ] || [ "$tag" = "s$first_seed" ] && return 0
  for seed in $seeds; do
    for system in "$1-s$seed" "hybrid-s$seed"; do
      args+=(--queries "$results/embeddings/$system/$2.queries.npy"
             --corpus "$results/embeddings/$system/$2.corpus.npy")
    done
  done
  timed "compare-hybrid-$tag-vs-$1-$tag-$2" hbt-score --protocol lareqa --compare \
    --qrels "$results/data/$2/qrels.trec" "${args[@]}" -o "$out"
}

seed_systems() {  # seed_systems SEED BENCH: train, evaluate and compare the three strategies
  train "mono-s$1" mono 0.5 "$1"
  train "cross-s$1" cross 0.5 "$1"
  train "hybrid-s$1" hybrid 0.5 "$1"
  for strategy in mono cross hybrid; do lareqa "$strategy-s$1" "$2"; done
  significance "mono-s$1" "hybrid-s$1" "$2"
  significance "cross-s$1" "hybrid-s$1" "$2"
}

miracl() {  # miracl SYSTEM LANG: encode queries and passages, flat index, top 100, score
  local out="$results/scores/$1/miracl-mini.$2.json" emb="$results/embeddings/$1"
  local data="$results/data/miracl-mini/$2"
  [ -s "$out" ] && return 0
  mkdir -p "$emb" "$results/scores/$1"
  log "evaluate $1 on MIRACL-mini $2"
  [ -s "$emb/miracl-mini.$2.queries.npy" ] || timed "encode-queries-$1-miracl-mini-$2" \
    hbt-encode --model "$(model_path "$1")" --kind query "$data/queries.jsonl" \
    -o "$emb/miracl-mini.$2.queries.npy"
  if [ ! -s "$emb/miracl-mini.$2.run.trec" ]; then  # the run is kept: rescoring needs no search
    [ -s "$emb/miracl-mini.$2.corpus.npy" ] || timed "encode-corpus-$1-miracl-mini-$2" \
      hbt-encode --model "$(model_path "$1")" --kind passage --fields miracl "$data/corpus.jsonl" \
      -o "$emb/miracl-mini.$2.corpus.npy"
    timed "index-$1-miracl-mini-$2" hbt-index "$emb/miracl-mini.$2.corpus.npy" \
      -o "$emb/miracl-mini.$2.index"
    timed "search-$1-miracl-mini-$2" hbt-search --index "$emb/miracl-mini.$2.index" \
      "$emb/miracl-mini.$2.queries.npy" -k 100 --tag "$1" -o "$emb/miracl-mini.$2.run.trec"
  fi
  timed "score-$1-miracl-mini-$2" hbt-score --qrels "$data/qrels.trec" \
    -m ndcg@10 -m p@10 -m recall@100 "$emb/miracl-mini.$2.run.trec" -o "$out"
  # The passage embeddings and the index are the big files; the run and scores stay.
  rm -rf "$emb/miracl-mini.$2.corpus.npy" "$emb/miracl-mini.$2.corpus.ids.jsonl" \
    "$emb/miracl-mini.$2.index"
}

phase_2() {
  log "phase 2: untrained + seed $first_seed of each strategy on XQuAD-R"
  lareqa untrained xquad-r
  seed_systems "$first_seed" xquad-r
}
phase_3() {
  log "phase 3: the same models on MLQA-R (zero-shot)"
  lareqa untrained mlqa-r
  seed_systems "$first_seed" mlqa-r
}
other_seeds() {  # other_seeds BENCH: the seeds after the first, then the tests pooled over all
  for seed in $seeds; do [ "$seed" = "$first_seed" ] || seed_systems "$seed" "$1"; done
  for baseline in mono cross; do pooled_significance "$baseline" "$1"; done
}
phase_4() {
  log "phase 4: the other seeds ($seeds) on XQuAD-R"
  other_seeds xquad-r
}
phase_5() {
  log "phase 5: alpha sweep ($alphas), seed $first_seed, XQuAD-R"
  for alpha in $alphas; do
    # Hybrid batches at alpha 0, 0.5 and 1 are byte for byte those of X-Y, Hybrid and X-X-mono
    # with the same seed (tests/test_make_batches.py), so those runs stand for them.
    case "$alpha" in 0|0.0|0.5|1|1.0) continue ;; esac
    train "hybrid-a$alpha-s$first_seed" hybrid "$alpha" "$first_seed"
    lareqa "hybrid-a$alpha-s$first_seed" xquad-r
  done
}
phase_6() {
  log "phase 6: the other seeds ($seeds) on MLQA-R"
  other_seeds mlqa-r
}
phase_7() {
  log "phase 7: MIRACL-mini ($miracl_langs)"
  for strategy in mono cross hybrid; do train "$strategy-s$first_seed" "$strategy" 0.5 "$first_seed"; done
  # Language by language, every system: a run cut short still compares them all on the
  # languages it reached.
  for lang in $miracl_langs; do
    for system in untrained "mono-s$first_seed" "cross-s$first_seed" "hybrid-s$first_seed"; do
      miracl "$system" "$lang"
    done
  done
}
for p in $phases; do
  case "$p" in [1-7]) "phase_$p" ;; *) echo "unknown phase '$p' (1-7)" >&2; exit 2 ;; esac
done
log "done: $results (report: python $here/make_report.py $results)"
