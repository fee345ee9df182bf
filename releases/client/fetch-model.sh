#!/bin/sh
# fetch-model.sh: download a model version from Model Releases, verified.
#
#   curl -fsSL __MODEL_SITE__/fetch-model.sh | sh -s -- MODEL VERSION DEST_DIR
#
# VERSION may be "latest"; the version it resolves to is printed. Files land at
# DEST_DIR/<path>. Choose a versioned DEST_DIR (e.g. models/index-tts/v23).
#
# For each file of the version it:
#   - skips the file when DEST_DIR/<path> is already there with the right SHA-256;
#   - downloads through the file's stable URL (which answers with a freshly signed
#     link) into DEST_DIR/<dir>/.<name>.part, resuming after an interruption and
#     asking the stable URL again for a fresh link when one has expired (403);
#   - throws away a body that is not the file (an HTML page, an empty body, a size
#     or SHA-256 other than the published one) and tries again with a fresh link,
#     like after a network failure;
#   - moves the verified file into place atomically. A partial or wrong file never
#     appears at DEST_DIR/<path>.
# With FETCH_MODEL_FROM=OLD_DIR[:OLD_DIR...], a file found at the same path in one of those
# folders with the published SHA-256 is hard-linked (or copied) instead of downloaded.
# Two runs on the same DEST_DIR take turns (a lock directory in DEST_DIR).
#
# Needs: sh, curl, and sha256sum (or shasum -a 256); uses openssl for hashing when present.
# Environment: MODEL_SITE overrides the site address; FETCH_MODEL_RETRIES (default 5)
# is the number of attempts per file without progress (failures and wrong bodies alike); FETCH_MODEL_CURL_OPTS adds options to every
# download (e.g. "--limit-rate 10M").
#
# Exit codes: 0 done; 1 usage; 2 a required tool is missing; 3 unknown model or
# version (404), or withdrawn (410); 4 the site or a download failed after every
# retry; 5 every try of a file gave something other than the published file;
# 6 DEST_DIR cannot be written or locked.

set -u

SITE=${MODEL_SITE:-'__MODEL_SITE__'}
SITE=${SITE%/}
RETRIES=${FETCH_MODEL_RETRIES:-5}
CURL_OPTS=${FETCH_MODEL_CURL_OPTS:-}
FROM=${FETCH_MODEL_FROM:-}

say() { printf '%s\n' "fetch-model: $*" >&2; }
die() { code=$1; shift; say "$*"; exit "$code"; }

usage() {
  say "usage: fetch-model.sh MODEL VERSION DEST_DIR   (VERSION may be 'latest')"
  exit 1
}

# curl with the caller's extra options (split into words on purpose); a link that stalls
# (under 1 KB/s for a minute) counts as failed and is retried.
fetch() {
  # shellcheck disable=SC2086
  curl --connect-timeout 30 --speed-limit 1024 --speed-time 60 $CURL_OPTS "$@"
}

# Percent-encode a path for a URL, keeping '/' (POSIX: od, no bash-isms).
urlencode() {
  case $1 in
    *[!A-Za-z0-9._~/-]*) ;;
    *) printf '%s' "$1"; return ;;
  esac
  printf '%s' "$1" | od -An -v -tx1 | tr -s ' \n' '  ' | {
    out=''
    # shellcheck disable=SC2013 # od printed one hex byte per word
    for byte in $(cat); do
      case $byte in
        2d|2e|2f|5f|7e|3[0-9]|4[1-9a-f]|5[0-9a]|6[1-9a-f]|7[0-9a])
          # shellcheck disable=SC2059 # the format is the byte we just read
          out=$out$(printf "\\$(printf '%03o' "0x$byte")") ;;
        *) out=$out%$byte ;;
      esac
    done
    printf '%s' "$out"
  }
}

size_of() { wc -c <"$1" | tr -d ' '; }

# Print a verified copy of PATH (its SHA-256 is EXPECTED) from the FETCH_MODEL_FROM folders.
reusable() {
  from_rest=$FROM
  while [ -n "$from_rest" ]; do
    from_dir=${from_rest%%:*}
    case $from_rest in *:*) from_rest=${from_rest#*:} ;; *) from_rest='' ;; esac
    if [ -z "$from_dir" ] || [ ! -f "$from_dir/$1" ]; then continue; fi
    if [ "$(sha256_stdin <"$from_dir/$1")" = "$2" ]; then
      printf '%s\n' "$from_dir/$1"
      return 0
    fi
  done
  return 1
}

# Fetch the stable URL (-L: every try asks it again, so an expired link is replaced
# by a fresh one) into PART. A fresh download is hashed while it arrives (into
# $TMP/sum); a resumed one is hashed afterwards. Sets CODE (curl's exit status).
fetch_to() {
  stable=$1 part=$2
  : >"$TMP/error"
  : >"$TMP/sum"
  if [ -s "$part" ]; then
    fetch -L -f $PROGRESS -S -C - -D "$TMP/got" -o "$part" "$stable" 2>"$CURL_ERRORS"
    CODE=$?
  else
    : >"$TMP/tee"
    { fetch -L -f $PROGRESS -S -D "$TMP/got" "$stable" 2>"$CURL_ERRORS"; echo $? >"$TMP/code"; } \
      | { tee "$part" || echo failed >"$TMP/tee"; } | sha256_stdin >"$TMP/sum"
    CODE=$(cat "$TMP/code")
    if [ -s "$TMP/tee" ]; then  # the hash covers what curl sent, not what reached the disk
      : >"$TMP/sum"
      [ "$CODE" -eq 0 ] && CODE=23
    fi
  fi
}

# The content type of the last response curl saw (after redirects).
last_content_type() {
  tr -d '\r' <"$TMP/got" | awk '
    tolower($1) ~ /^http\// { type = "" }
    tolower($1) == "content-type:" { type = tolower($2) }
    END { print type }'
}

# What is wrong with the complete body in PART, or nothing: an HTML page, an empty body, a size
# other than the published one, a SHA-256 other than the expected one.
wrong_body() {
  path=$1 expected=$2 part=$3
  case $(last_content_type) in
    text/html*)
      case $path in *.html|*.htm) ;; *) echo "the server sent an HTML page instead of the file"; return ;; esac ;;
  esac
  have=0
  [ -f "$part" ] && have=$(size_of "$part")
  if [ "$have" -eq 0 ] && [ "${size:-1}" != 0 ]; then
    echo "the server sent an empty body"
    return
  fi
  if [ -n "$size" ] && [ "$have" -ne "$size" ]; then
    echo "got $have bytes, the site publishes $size"
    return
  fi
  # Trust the hash taken on the way only when the size is known to match.
  actual=''
  [ -n "$size" ] && actual=$(cut -d ' ' -f 1 "$TMP/sum")
  [ -n "$actual" ] || actual=$(sha256_stdin <"$part")
  [ "$actual" = "$expected" ] || echo "SHA-256 mismatch (got $actual, expected $expected)"
}

# download PATH SHA PART: fetch into PART until it holds the published file, verified.
# A wrong body (a captive portal's page, a proxy's empty answer, other bytes) is thrown away
# and the stable URL asked again for a fresh link, like a network failure.
# Returns 0, 4 (network, after every retry) or 5 (never the published file).
download() {
  path=$1 expected=$2 part=$3
  stable="$SITE/models/$(urlencode "$MODEL")/$(urlencode "$RESOLVED")/$(urlencode "$path")"
  fetch -sS -I "$stable" 2>/dev/null | tr -d '\r' >"$TMP/head" || true
  size=$(sed -n 's/^[Xx]-[Aa]rtifact-[Ss]ize: *//p' "$TMP/head" | tail -n 1)
  published=$(sed -n 's/^[Xx]-[Aa]rtifact-[Ss][Hh][Aa]256: *//p' "$TMP/head" | tail -n 1)
  if [ -n "$published" ] && [ "$published" != "$expected" ]; then
    say "$path: the site lists SHA-256 $expected but serves $published"
    return 5
  fi
  tries=1
  failure=4
  while :; do
    have=0
    [ -f "$part" ] && have=$(size_of "$part")
    if [ -n "$size" ] && [ "$have" -gt "$size" ]; then
      rm -f "$part"
      have=0
    fi
    before=$have
    if [ -n "$size" ] && [ "$have" -eq "$size" ]; then
      [ -f "$part" ] || : >"$part"  # complete already (an empty file before it starts): check it
      : >"$TMP/sum"
      : >"$TMP/got"
      : >"$TMP/error"
      CODE=0
    else
      [ "$have" -gt 0 ] && say "$path: resuming at $have bytes"
      fetch_to "$stable" "$part"
    fi
    why=$(tail -n 1 "$TMP/error")
    why=${why:-curl exit $CODE}
    case $CODE in
      0)
        problem=$(wrong_body "$path" "$expected" "$part")
        [ -z "$problem" ] && return 0
        rm -f "$part"
        before=0
        failure=5
        say "$path: $problem; asking the stable URL for a fresh link" ;;
      33|36) rm -f "$part" ;;  # the server cannot resume: start again from zero
      22) failure=4; say "$path: $why; asking the stable URL for a fresh link" ;;
      *) failure=4; say "$path: $why" ;;
    esac
    now=0
    [ -f "$part" ] && now=$(size_of "$part")
    if [ "$now" -gt "$before" ]; then
      tries=1  # it made progress: a flaky link gets its retries afresh
    else
      [ "$tries" -ge "$RETRIES" ] && { say "$path: giving up after $tries tries"; return "$failure"; }
      sleep "$tries"
      tries=$((tries + 1))
    fi
  done
}

main() {
  [ $# -eq 3 ] || usage
  MODEL=$1
  VERSION=$2
  DEST=$3
  if [ -z "$MODEL" ] || [ -z "$VERSION" ] || [ -z "$DEST" ]; then usage; fi

  command -v curl >/dev/null 2>&1 || die 2 "curl is required but not installed"
  # OpenSSL when it is there (several times faster), else sha256sum, else shasum.
  if command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r </dev/null >/dev/null 2>&1; then
    sha256_stdin() { openssl dgst -sha256 -r | cut -d ' ' -f 1; }
  elif command -v sha256sum >/dev/null 2>&1; then
    sha256_stdin() { sha256sum | cut -d ' ' -f 1; }
  elif command -v shasum >/dev/null 2>&1; then
    sha256_stdin() { shasum -a 256 | cut -d ' ' -f 1; }
  else
    die 2 "sha256sum (or shasum) is required but not installed"
  fi


  TMP=$(mktemp -d 2>/dev/null || mktemp -d -t fetch-model) || die 6 "cannot create a temporary directory"
  LOCK=''
  cleanup() {
    [ -n "$LOCK" ] && rm -rf "$LOCK"
    rm -rf "$TMP"
  }
  trap cleanup EXIT
  # A progress bar on a terminal; in logs, only our own one line per file or failure.
  if [ -t 2 ]; then PROGRESS=--progress-bar; CURL_ERRORS=/dev/stderr; else PROGRESS=--silent; CURL_ERRORS=$TMP/error; fi
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # --- the version's checksums; the header tells the resolved version -------------
  sums_url="$SITE/api/v1/models/$(urlencode "$MODEL")/versions/$(urlencode "$VERSION")/sha256sums"
  attempt=1
  while :; do
    if status=$(fetch -sS -L -D "$TMP/headers" -o "$TMP/sums" -w '%{http_code}' "$sums_url" 2>"$TMP/error"); then
      case $status in 5??) ;; *) break ;; esac  # a proxy's 502/503: try again
      problem="$sums_url answered HTTP $status"
    else
      problem="cannot reach $SITE: $(cat "$TMP/error")"
    fi
    [ "$attempt" -ge "$RETRIES" ] && die 4 "$problem"
    sleep "$attempt"
    attempt=$((attempt + 1))
  done
  case $status in
    200) ;;
    404|410)
      detail=$(sed -n 's/.*"detail": *"\(.*\)".*/\1/p' "$TMP/sums")
      die 3 "${detail:-$MODEL $VERSION: not found ($status)}" ;;
    *) die 4 "$sums_url answered HTTP $status" ;;
  esac
  RESOLVED=$(tr -d '\r' <"$TMP/headers" | sed -n 's/^[Xx]-[Aa]rtifact-[Vv]ersion: *//p' | tail -n 1)
  [ -n "$RESOLVED" ] || die 4 "$sums_url did not name the version (is $SITE a Model Releases site?)"
  if [ "$RESOLVED" = "$VERSION" ]; then
    say "$MODEL $RESOLVED"
  else
    say "$MODEL $VERSION is $RESOLVED"
  fi

  mkdir -p "$DEST" 2>/dev/null || die 6 "cannot create $DEST"

  # --- one run per DEST_DIR at a time ------------------------------------------------
  LOCK_DIR="$DEST/.fetch-model.lock"
  waited=0
  until mkdir "$LOCK_DIR" 2>/dev/null; do
    holder=$(cat "$LOCK_DIR/pid" 2>/dev/null || true)
    if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then
      # Left by a run that died. Move it aside under a name of our own before removing it, so
      # two runs taking over at once cannot remove each other's fresh lock.
      mv "$LOCK_DIR" "$LOCK_DIR.stale.$$" 2>/dev/null && rm -rf "$LOCK_DIR.stale.$$"
      continue
    fi
    [ "$waited" -eq 0 ] && say "another fetch-model run is working in $DEST; waiting for it"
    waited=$((waited + 1))
    [ "$waited" -gt 3600 ] && die 6 "$DEST stayed locked for an hour ($LOCK_DIR); remove it if no run is active"
    sleep 1
  done
  LOCK=$LOCK_DIR
  echo $$ >"$LOCK_DIR/pid"

  failed=0
  downloaded=0
  reused=0
  kept=0
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    expected=${line%%  *}
    path=${line#*  }
    case $path in
      /*|../*|*/../*|*/..|..) die 5 "refusing the unsafe path '$path' from the site" ;;
    esac
    target="$DEST/$path"
    dir=$(dirname "$target")
    part="$dir/.$(basename "$target").part"
    if [ -f "$target" ] && [ "$(sha256_stdin <"$target")" = "$expected" ]; then
      kept=$((kept + 1))
      say "$path: already there, verified"
      continue
    fi
    mkdir -p "$dir" 2>/dev/null || die 6 "cannot create $dir"
    rm -f "$target"  # present but wrong: never leave it there
    if [ -n "$FROM" ] && source=$(reusable "$path" "$expected"); then
      copy="$dir/.$(basename "$target").reuse"
      rm -f "$copy"
      if ! { ln "$source" "$copy" 2>/dev/null || cp "$source" "$copy"; } || ! mv -f "$copy" "$target"; then
        die 6 "cannot copy $source to $target"
      fi
      reused=$((reused + 1))
      say "$path: reused $source, SHA-256 verified"
      continue
    fi
    if download "$path" "$expected" "$part"; then
      mv -f "$part" "$target" || die 6 "cannot move $path into place"
      downloaded=$((downloaded + 1))
      say "$path: downloaded, SHA-256 verified"
    else
      failed=$?
      rm -f "$part"  # never keep bytes that are not the file
      say "$path: FAILED"
    fi
  done <"$TMP/sums"

  if [ "$failed" -ne 0 ]; then
    die "$failed" "$MODEL $RESOLVED: not every file could be fetched; run again to resume"
  fi
  say "$MODEL $RESOLVED: $downloaded downloaded, $reused reused, $kept already there, in $DEST"
}

# The whole script is read before it runs (it may arrive on stdin: curl ... | sh).
main "$@"
