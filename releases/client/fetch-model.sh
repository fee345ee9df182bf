#!/bin/sh
# fetch-model.sh: download a model version from Model Releases, verified.
#
#   curl -fsSL __MODEL_SITE__/fetch-model.sh | sh -s -- [OPTIONS] MODEL VERSION DEST_DIR
#
# VERSION may be "latest"; the version it resolves to is printed. Files land at
# DEST_DIR/<path>. Choose a versioned DEST_DIR (e.g. models/index-tts/v23).
#
# For each file of the version it:
#   - trusts a file that is as it was when a run verified it: DEST_DIR/.fetch-model.record
#     holds each file's SHA-256 and the stat facts of its bytes (size, mtime, inode, ctime), so a
#     later run reads no file bytes; a file whose facts changed is hashed again, and fetched again
#     when it no longer matches;
#   - downloads through the file's stable URL (which answers with a freshly signed
#     link) into DEST_DIR/<dir>/.<name>.part, resuming after an interruption and
#     asking the stable URL again for a fresh link when one has expired (403);
#   - throws away a body that is not the file (an HTML page, an empty body, a size
#     or SHA-256 other than the published one, a byte past the published size) and tries
#     again with a fresh link, like after a network failure;
#   - moves the verified file into place atomically, read-only. A partial or wrong file never
#     appears at DEST_DIR/<path>.
# When the site cannot be reached, a folder whose record matches its files is used as it is
# (one warning line, exit 0). A yanked version is fetched with a warning that says why.
# With FETCH_MODEL_FROM=OLD_DIR[:OLD_DIR...], a file found at the same path in one of those
# folders with the published SHA-256 is cloned (reflink), hard-linked or copied instead of
# downloaded. Two runs on the same DEST_DIR take turns (a lock directory in DEST_DIR).
#
# Options (before MODEL): --include PATTERN, --exclude PATTERN (repeatable; `case` patterns on
# the whole path, `*` also matches `/`): fetch only the files that match an include (all when
# none is given) and no exclude.
#
# Needs: sh, curl, stat (GNU or BSD), head -c, df, and sha256sum (or shasum -a 256); uses openssl for
# hashing when present.
# Environment: MODEL_SITE overrides the site address; FETCH_MODEL_RETRIES (default 5) is the
# number of attempts per file without progress (failures and wrong bodies alike);
# FETCH_MODEL_CURL_OPTS adds options to every request (e.g. "--limit-rate 10M");
# FETCH_MODEL_VERIFY=1 hashes every file again; FETCH_MODEL_OFFLINE=1 uses the verified copy in
# DEST_DIR without asking the site; FETCH_MODEL_INCLUDE / FETCH_MODEL_EXCLUDE hold patterns
# separated by ':' (used when no --include / --exclude option is given).
#
# Run reports (docs/run-reports.md): when the site's sha256sums answer (its 404 or 410 too) names
# a report URL (X-Report-URL), the run ends with one POST to it (2 s at most, no retries, the
# answer ignored) of exactly: model, requested and resolved version, client (fetch-model.sh) and
# client_version, the exit code and its name, run_kind (first, update, later, offline), tries,
# fresh_links, bytes_downloaded, bytes_reused, bytes_delta (0), duration_ms, os (linux, darwin,
# windows, other) and resumed. Never a path, host name or user name. A run that could not reach
# the site keeps its report in DEST_DIR/.fetch-model.report (one JSON line each, the last 10) for
# the next run that can. FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1 sends and keeps nothing.
#
# Exit codes: 0 done; 1 usage; 2 a required tool is missing; 3 unknown model or
# version (404), or withdrawn (410); 4 the site or a download failed after every
# retry, or the site's answer is malformed; 5 every try of a file gave something other than
# the published file; 6 DEST_DIR cannot be written or locked, or has not enough free space.

set -u

SITE=${MODEL_SITE:-'__MODEL_SITE__'}
SITE=${SITE%/}
RETRIES=${FETCH_MODEL_RETRIES:-5}
CURL_OPTS=${FETCH_MODEL_CURL_OPTS:-}
FROM=${FETCH_MODEL_FROM:-}
VERIFY=${FETCH_MODEL_VERIFY:-}
OFFLINE=${FETCH_MODEL_OFFLINE:-}
INCLUDE=${FETCH_MODEL_INCLUDE:-}
EXCLUDE=${FETCH_MODEL_EXCLUDE:-}
[ "$VERIFY" = 0 ] && VERIFY=''
[ "$OFFLINE" = 0 ] && OFFLINE=''
NO_REPORT=''
case ${FETCH_MODEL_NO_REPORT:-0}${DO_NOT_TRACK:-0} in *[!0]*) NO_REPORT=1 ;; esac  # any value but 0
CLIENT_VERSION=1
TAB=$(printf '\t')
SUMS_CAP=16777216          # the most a sha256sums answer may hold
SUMS_WAIT=10               # seconds a complete copy waits for the site to answer
MARGIN=67108864            # free space kept beyond what is downloaded (or 1% of it, if more)
RECORD_FORMAT='fetch-model-record 1'
# Redirects stay on http(s), and an https site never sends us to plain http.
case $SITE in https://*) REDIRECT_PROTOCOLS='=https' ;; *) REDIRECT_PROTOCOLS='=http,https' ;; esac

say() { printf '%s\n' "fetch-model: $*" >&2; }
die() { code=$1; shift; say "$*"; exit "$code"; }

usage() {
  say "usage: fetch-model.sh MODEL VERSION DEST_DIR   (VERSION may be 'latest'; before MODEL: [--include PATTERN] [--exclude PATTERN])"
  exit 1
}

# curl with the caller's extra options (split into words on purpose); a link that stalls
# (under 1 KB/s for a minute) counts as failed and is retried.
fetch() {
  # shellcheck disable=SC2086
  curl --proto =http,https --proto-redir "$REDIRECT_PROTOCOLS" --connect-timeout 30 \
    --speed-limit 1024 --speed-time 60 $CURL_OPTS "$@"
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

# Decode a percent-encoded header value; control characters become spaces (it is printed).
urldecode() {
  rest=$1 out=''
  while :; do
    case $rest in *%*) ;; *) break ;; esac
    out=$out${rest%%\%*}
    rest=${rest#*%}
    case $rest in
      [0-9A-Fa-f][0-9A-Fa-f]*)
        hex=${rest%"${rest#??}"}
        rest=${rest#??}
        # shellcheck disable=SC2059 # the format is the byte we just read
        out=$out$(printf "\\$(printf '%03o' "0x$hex")") ;;
      *) out=$out% ;;
    esac
  done
  printf '%s' "$out$rest" | tr '\000-\037\177' ' '
}

# The value of header $1 in the last response of the header dump $2 (after redirects).
header() {
  tr -d '\r' <"$2" | awk -v want="$1:" '
    tolower($1) ~ /^http\// { value = "" }
    tolower($1) == tolower(want) { sub(/^[^:]*:[ \t]*/, ""); value = $0 }
    END { print value }'
}

# The status code of the last response in the header dump $1.
status_of() {
  tr -d '\r' <"$1" | awk 'tolower($1) ~ /^http\// { status = $2 } END { print status }'
}

# Stat facts of a file, following links: "SIZE MTIME INODE CTIME MODE", times as SECONDS.NNNNNNNNN
# where stat can tell nanoseconds (GNU: %.9Y, BSD: %Fm), else whole seconds (compared as such).
facts() {
  case $STAT in
    gnu-ns) stat -L -c '%s %.9Y %i %.9Z %a' -- "$1" ;;
    gnu) stat -L -c '%s %Y %i %Z %a' -- "$1" ;;
    bsd-ns) stat -L -f '%z %Fm %i %Fc %Lp' -- "$1" ;;
    bsd) stat -L -f '%z %m %i %c %Lp' -- "$1" ;;
  esac 2>/dev/null
}

detect_stat() {
  probe=$TMP/probe
  : >"$probe"
  for STAT in gnu-ns gnu bsd-ns bsd; do
    case $(facts "$probe") in
      "0 "*.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]" "*" "*.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]" "[0-7]*)
        case $STAT in *-ns) return ;; esac ;;
      "0 "[0-9]*" "[0-9]*" "[0-9]*" "[0-7]*)
        case $STAT in *-ns) ;; *) return ;; esac ;;
    esac
  done
  die 2 "stat (GNU or BSD) is required but not installed"
}

# The facts as the record writes them: nine fraction digits always (zeros when stat has none).
record_facts() {
  # shellcheck disable=SC2086 # SIZE MTIME INODE CTIME MODE, split on purpose
  set -- $1
  case $STAT in *-ns) printf '%s\t%s\t%s\t%s' "$1" "$2" "$3" "$4" ;;
    *) printf '%s\t%s.000000000\t%s\t%s.000000000' "$1" "$2" "$3" "$4" ;;
  esac
}

# same_facts FILE SIZE MTIME INODE CTIME: the file is as the record saw it (whole seconds only
# when stat cannot tell nanoseconds).
same_facts() {
  now=$(facts "$1") || return 1
  case $STAT in
    *-ns) [ "${now% *}" = "$2 $3 $4 $5" ] ;;
    *) [ "${now% *}" = "$2 ${3%%.*} $4 ${5%%.*}" ] ;;
  esac
}

size_of() {
  # shellcheck disable=SC2046 # the first of the facts is the size
  set -- $(facts "$1")
  printf '%s' "${1:-0}"
}

# Make a placed file read-only (before its facts are taken: chmod changes ctime), unless it is.
protect() {
  mode=$(facts "$1")
  case ${mode##* } in
    *[2367]*) chmod a-w "$1" 2>/dev/null || true ;;  # a write bit in one of the octal digits
  esac
}

# --- the record of what a run verified ------------------------------------------------------

# read_record FILE: sets REC_MODEL, REC_REQUESTED, REC_VERSION, REC_VERIFIED, REC_INCLUDE,
# REC_EXCLUDE and writes its file lines (SIZE SHA MTIME INODE CTIME PATH) to $TMP/record.files.
# Fails on anything but a record of this format (then treated as absent).
read_record() {
  REC_MODEL='' REC_REQUESTED='' REC_VERSION='' REC_VERIFIED='' REC_INCLUDE='' REC_EXCLUDE=''
  : >"$TMP/record.files"
  [ -f "$1" ] || return 1
  first=1
  while IFS= read -r line || [ -n "$line" ]; do
    if [ "$first" = 1 ]; then
      [ "$line" = "$RECORD_FORMAT" ] || return 1
      first=0
      continue
    fi
    key=${line%%"$TAB"*}
    value=${line#*"$TAB"}
    case $key in
      model) REC_MODEL=$value ;;
      requested) REC_REQUESTED=$value ;;
      version) REC_VERSION=$value ;;
      verified) REC_VERIFIED=$value ;;
      include) REC_INCLUDE=${REC_INCLUDE:+$REC_INCLUDE:}$value ;;
      exclude) REC_EXCLUDE=${REC_EXCLUDE:+$REC_EXCLUDE:}$value ;;
      file) printf '%s\n' "$value" >>"$TMP/record.files" ;;
    esac  # unknown keys are for newer readers
  done <"$1" 2>/dev/null
  [ "$first" = 0 ]
}

write_record() {
  {
    printf '%s\n' "$RECORD_FORMAT"
    printf 'model\t%s\nrequested\t%s\nversion\t%s\nverified\t%s\n' "$MODEL" "$VERSION" "$RESOLVED" \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    each_pattern "$INCLUDE" 'include'
    each_pattern "$EXCLUDE" 'exclude'
    printf 'client\tfetch-model.sh/%s\n' "$CLIENT_VERSION"
    sort -n "$TMP/verified" | cut -f 2-
  } >"$TMP/record.new"
  new="$DEST/.fetch-model.record.$$.tmp"
  if ! cp "$TMP/record.new" "$new" 2>/dev/null || ! mv -f "$new" "$RECORD"; then
    rm -f "$new"
    die 6 "cannot write $RECORD"
  fi
}

each_pattern() {  # LIST KEY: one "KEY<TAB>PATTERN" line per pattern of the ':'-separated LIST
  rest=$1
  while [ -n "$rest" ]; do
    pattern=${rest%%:*}
    case $rest in *:*) rest=${rest#*:} ;; *) rest='' ;; esac
    [ -n "$pattern" ] && printf '%s\t%s\n' "$2" "$pattern"
  done
}

# The verified facts of DEST_DIR/PATH for the record, in the site's order (INDEX first).
verified() {  # INDEX SHA PATH FACTS
  line=$(record_facts "$4")
  printf '%s\tfile\t%s\t%s\t%s\t%s\n' "$1" "${line%%"$TAB"*}" "$2" "${line#*"$TAB"}" "$3" >>"$TMP/verified"
}

# The copy in DEST_DIR that a record vouches for, for a run that cannot (or may not) ask the
# site: the record names this model and VERSION (as asked or as resolved), the same patterns,
# and every file it lists is as recorded (or hashes to the recorded SHA-256). Reads no file
# whose facts match; writes nothing. With "facts-only", a file whose facts differ fails (no hashing).
usable_copy() {
  read_record "$RECORD" || return 1
  [ "$REC_MODEL" = "$MODEL" ] || return 1
  [ "$REC_REQUESTED" = "$VERSION" ] || [ "$REC_VERSION" = "$VERSION" ] || return 1
  [ "$REC_INCLUDE" = "$INCLUDE" ] && [ "$REC_EXCLUDE" = "$EXCLUDE" ] || return 1
  [ -s "$TMP/record.files" ] || return 1
  while IFS="$TAB" read -r size sha mtime inode ctime path; do
    unsafe_path "$path" && return 1
    file="$DEST/$path"
    [ -f "$file" ] || return 1
    same_facts "$file" "$size" "$mtime" "$inode" "$ctime" && continue
    [ "${1:-}" != facts-only ] && [ "$(sha256_stdin <"$file")" = "$sha" ] || return 1
  done <"$TMP/record.files"
}

recorded_bytes() {  # the size of the files the record lists (read by usable_copy)
  awk -F "$TAB" '{ total += $1 } END { printf "%d", total }' "$TMP/record.files"
}

COPY=''
copy_is_usable() {  # usable_copy, checked once per run
  [ -n "$COPY" ] || { if usable_copy; then COPY=yes; else COPY=no; fi; }
  [ "$COPY" = yes ]
}

unsafe_path() {
  case $1 in
    ''|/*|../*|*/../*|*/..|..|*"$TAB"*) return 0 ;;
  esac
  case $1 in *[[:cntrl:]]*) return 0 ;; esac
  return 1
}

# --- which files ------------------------------------------------------------------------------

matches_any() {  # PATH LIST: PATH matches one of the ':'-separated patterns
  rest=$2
  while [ -n "$rest" ]; do
    pattern=${rest%%:*}
    case $rest in *:*) rest=${rest#*:} ;; *) rest='' ;; esac
    [ -n "$pattern" ] || continue
    # shellcheck disable=SC2254 # the pattern is a pattern
    case $1 in $pattern) return 0 ;; esac
  done
  return 1
}

selected() {
  if [ -n "$INCLUDE" ] && ! matches_any "$1" "$INCLUDE"; then return 1; fi
  [ -z "$EXCLUDE" ] || ! matches_any "$1" "$EXCLUDE"
}

# --- reuse ------------------------------------------------------------------------------------

# Print a verified copy of PATH (its SHA-256 is EXPECTED) from the FETCH_MODEL_FROM folders: one
# that its folder's record vouches for is not read again.
reusable() {
  from_rest=$FROM
  while [ -n "$from_rest" ]; do
    from_dir=${from_rest%%:*}
    case $from_rest in *:*) from_rest=${from_rest#*:} ;; *) from_rest='' ;; esac
    if [ -z "$from_dir" ] || [ ! -f "$from_dir/$1" ]; then continue; fi
    if vouched "$from_dir" "$1" "$2" || [ "$(sha256_stdin <"$from_dir/$1")" = "$2" ]; then
      printf '%s\n' "$from_dir/$1"
      return 0
    fi
  done
  return 1
}

vouched() {  # DIR PATH SHA: DIR's record lists PATH with SHA and the file is as recorded
  [ -f "$1/.fetch-model.record" ] && [ "$(head -n 1 "$1/.fetch-model.record")" = "$RECORD_FORMAT" ] || return 1
  facts_line=$(P=$2 S=$3 awk -F "$TAB" '$1 == "file" && $7 == ENVIRON["P"] && $3 == ENVIRON["S"] {
    print $2, $4, $5, $6; exit }' "$1/.fetch-model.record")
  [ -n "$facts_line" ] || return 1
  # shellcheck disable=SC2086 # four words: SIZE MTIME INODE CTIME
  same_facts "$1/$2" $facts_line
}

# Place SOURCE at TARGET without downloading: a copy-on-write clone where the filesystem has
# them (no shared bytes), else a hard link, else a copy; read-only.
place_copy() {
  source=$1 target=$2
  copy="$(dirname "$target")/.$(basename "$target").reuse"
  rm -f "$copy"
  cp --reflink=always "$source" "$copy" 2>/dev/null || { rm -f "$copy"; ln "$source" "$copy" 2>/dev/null; } \
    || { rm -f "$copy"; cp "$source" "$copy"; } || { rm -f "$copy"; return 1; }
  protect "$copy"
  mv -f "$copy" "$target"
}

# --- downloads --------------------------------------------------------------------------------

# The published size and SHA-256 of a file (a HEAD of its stable URL, not counted as a download),
# tried like a download. Sets SIZE and PUBLISHED; fails when the site never tells them.
published_facts() {
  stable=$1 attempt=1
  while :; do
    : >"$TMP/head"
    fetch -sS -I -D "$TMP/head" -o /dev/null "$stable" 2>/dev/null  # the site's own answer, not the link's
    SIZE=$(header X-Artifact-Size "$TMP/head")
    PUBLISHED=$(header X-Artifact-SHA256 "$TMP/head")
    case $SIZE in ''|*[!0-9]*) ;; *) return 0 ;; esac
    [ "$attempt" -ge "$RETRIES" ] && return 1
    sleep "$attempt"
    attempt=$((attempt + 1))
  done
}

# One try: fetch the stable URL (-L: every try asks it again, so an expired link is replaced by a
# fresh one) into PART from byte HAVE, never writing past the published SIZE: curl refuses a
# longer announced body (--max-filesize) and at most the missing bytes reach the disk; one more
# byte is read to tell a longer body. A fresh download is hashed while it arrives (into
# $TMP/sum). Sets CODE (curl's exit status, 23 when the disk write failed) and OVER.
fetch_to() {
  stable=$1 part=$2 have=$3 budget=$(($4 - $3))
  : >"$TMP/error"
  : >"$TMP/sum"
  : >"$TMP/tee"
  : >"$TMP/got"
  resume=''
  [ "$have" -gt 0 ] && resume="-C $have"
  # shellcheck disable=SC2086 # $resume is two words or none
  { fetch -L -f $PROGRESS -S $resume --max-filesize "$budget" -D "$TMP/got" "$stable" 2>"$CURL_ERRORS"
    echo $? >"$TMP/code"; } \
    | { head -c "$budget" | { LC_ALL=C tee -a "$part" 2>"$TMP/tee" || echo failed >>"$TMP/tee"; } | sha256_stdin >"$TMP/sum"
        head -c 1 | wc -c | tr -d ' ' >"$TMP/over"; }
  CODE=$(cat "$TMP/code")
  OVER=$(cat "$TMP/over")
  if [ -s "$TMP/tee" ]; then  # the hash covers what curl sent, not what reached the disk
    : >"$TMP/sum"
    CODE=23
  fi
  [ "$have" -gt 0 ] && : >"$TMP/sum"  # only a whole body hashed on the way counts
}

# An HTML page where the file is not one (a captive portal's sign-in page, a proxy's error page).
html_instead() {
  case $(header Content-Type "$TMP/got" | tr '[:upper:]' '[:lower:]') in
    text/html*)
      case $1 in *.html|*.htm) ;; *) echo "the server sent an HTML page instead of the file"; return 0 ;; esac ;;
  esac
  return 1
}

# What is wrong with the complete body in PART, or nothing: an HTML page, an empty body, a size
# other than the published one, a SHA-256 other than the expected one.
wrong_body() {
  path=$1 expected=$2 part=$3
  html_instead "$path" && return
  have=0
  [ -f "$part" ] && have=$(size_of "$part")
  if [ "$have" -eq 0 ] && [ "$SIZE" != 0 ]; then
    echo "the server sent an empty body"
    return
  fi
  if [ "$have" -ne "$SIZE" ]; then
    echo "got $have bytes, the site publishes $SIZE"
    return
  fi
  actual=$(cut -d ' ' -f 1 "$TMP/sum")
  [ -n "$actual" ] || actual=$(sha256_stdin <"$part")
  [ "$actual" = "$expected" ] || echo "SHA-256 mismatch (got $actual, expected $expected)"
}

# download PATH SHA PART: fetch into PART until it holds the published file (SIZE bytes), verified.
# A wrong body (a captive portal's page, a proxy's empty answer, other bytes, bytes past the
# size) is thrown away and the stable URL asked again for a fresh link, like a network failure;
# it is never progress. Returns 0, 4 (network, after every retry), 5 (never the published file)
# or 6 (the disk is full).
download() {
  path=$1 expected=$2 part=$3 stable=$4
  tries=1
  failure=4
  asked=0  # tries of this file so far: every one after the first asks for a fresh link
  while :; do
    have=0
    [ -f "$part" ] && have=$(size_of "$part")
    if [ "$have" -gt "$SIZE" ]; then
      rm -f "$part"
      have=0
    fi
    before=$have
    OVER=0
    if [ "$have" -eq "$SIZE" ]; then
      [ -f "$part" ] || : >"$part"  # complete already (an empty file before it starts): check it
      : >"$TMP/sum"
      : >"$TMP/got"
      : >"$TMP/error"
      CODE=0
    else
      [ "$have" -gt 0 ] && say "$path: resuming at $have bytes"
      [ "$have" -gt 0 ] && [ "$asked" -eq 0 ] && RESUMED=1  # a part an earlier run left
      [ "$asked" -gt 0 ] && FRESH=$((FRESH + 1))
      asked=$((asked + 1))
      TRIES=$((TRIES + 1))
      IN_FLIGHT=$part IN_FLIGHT_FROM=$have
      fetch_to "$stable" "$part" "$have" "$SIZE"
      count_in_flight
    fi
    why=$(tail -n 1 "$TMP/error")
    why=${why:-curl exit $CODE}
    if [ "$CODE" = 23 ] && grep -q 'No space left on device' "$TMP/tee"; then
      return 6
    fi
    problem=''
    if [ "$OVER" != 0 ]; then
      problem=$(html_instead "$path") || problem="the server sent more than the published $SIZE bytes"
    elif [ "$CODE" = 63 ]; then  # curl refused the announced length before reading the body
      announced=$(header Content-Length "$TMP/got")
      problem=$(html_instead "$path") \
        || problem="the server sends $announced bytes where $((SIZE - have)) are missing (the site publishes $SIZE)"
    elif [ "$CODE" = 0 ]; then
      problem=$(wrong_body "$path" "$expected" "$part")
      [ -z "$problem" ] && return 0
    fi
    if [ -n "$problem" ]; then
      rm -f "$part"
      before=0
      failure=5
      say "$path: $problem; asking the stable URL for a fresh link"
    else
      case $CODE in
        33|36) rm -f "$part"; before=0 ;;  # the server cannot resume: start again from zero
        22) failure=4; say "$path: $why; asking the stable URL for a fresh link" ;;
        *) failure=4; say "$path: $why" ;;
      esac
    fi
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

human() {  # BYTES, as a person reads them
  awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", unit, " "); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    if (i == 1) printf "%d B", b; else printf "%.1f %s", b, unit[i] }'
}

# Enough room for what is still missing, and a margin, or exit 6 before a byte is downloaded.
check_free_space() {
  missing=$1
  [ "$missing" -gt 0 ] || return 0
  free_kib=$(df -Pk "$DEST" 2>/dev/null | awk 'NR == 2 { print $4 }')
  case $free_kib in ''|*[!0-9]*) return 0 ;; esac  # no df answer: the writes will tell
  margin=$((missing / 100))
  [ "$margin" -lt "$MARGIN" ] && margin=$MARGIN
  need=$((missing + margin))
  free=$((free_kib * 1024))
  [ "$free" -ge "$need" ] && return 0
  die 6 "not enough free space in $DEST: $(human "$need") needed ($(human "$missing") to download + margin), $(human "$free") free"
}

# --- the version's checksums ------------------------------------------------------------------

# Ask for the version's sha256sums (read with a cap). Sets STATUS, or returns 1 with REASON when
# the site cannot be reached (no connection, or 5xx/429 after the retries).
get_sums() {
  sums_url="$SITE/api/v1/models/$(urlencode "$MODEL")/versions/$(urlencode "$VERSION")/sha256sums"
  attempt=1
  while :; do
    : >"$TMP/headers"
    # shellcheck disable=SC2086 # $SUMS_LIMITS is options or nothing
    { fetch -sS -L -D "$TMP/headers" --max-filesize "$SUMS_CAP" $SUMS_LIMITS "$sums_url" 2>"$TMP/error"
      echo $? >"$TMP/code"; } \
      | head -c $((SUMS_CAP + 1)) >"$TMP/sums"
    code=$(cat "$TMP/code")
    STATUS=$(status_of "$TMP/headers")
    if [ "$(size_of "$TMP/sums")" -gt "$SUMS_CAP" ] || [ "$code" = 63 ]; then
      die 4 "$sums_url: the answer is larger than $SUMS_CAP bytes; is $SITE a Model Releases site?"
    fi
    if [ "$code" != 0 ]; then
      REASON=$(tail -n 1 "$TMP/error" | sed 's/^curl: ([0-9]*) //')
      REASON=${REASON:-curl exit $code}
      copy_is_usable && return 1  # no connection: a complete copy need not wait for retries
    else
      case $STATUS in 5??|429) REASON="HTTP $STATUS" ;; *) return 0 ;; esac  # a proxy's 502/503: again
    fi
    [ "$attempt" -ge "$RETRIES" ] && return 1
    sleep "$attempt"
    attempt=$((attempt + 1))
  done
}

# Check every line of the sums (`<64 hex>  <path>`), keep the selected ones as
# "INDEX<TAB>SHA<TAB>PATH" in $TMP/selected.
select_files() {
  : >"$TMP/selected"
  index=0
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    expected=${line%%  *}
    path=${line#*  }
    case $expected in *[!0-9a-f]*) expected='' ;; esac
    if [ "${#expected}" -ne 64 ] || [ "$path" = "$line" ]; then
      die 4 "$sums_url: malformed line $((index + 1)) (not '<sha256>  <path>')"
    fi
    unsafe_path "$path" && die 5 "refusing the unsafe path '$path' from the site"
    index=$((index + 1))
    selected "$path" && printf '%s\t%s\t%s\n' "$index" "$expected" "$path" >>"$TMP/selected"
  done <"$TMP/sums"
  [ -s "$TMP/selected" ] || die 1 "no file of $MODEL $RESOLVED matches the --include/--exclude patterns"
}

# --- the run report (docs/run-reports.md) --------------------------------------------------------

KEPT_REPORTS=10  # reports a folder keeps for a run that reaches the site, the newest

json_string() {  # VALUE as a JSON string (the values are slugs and versions; escaped anyway)
  case $1 in
    *[!A-Za-z0-9._+-]*) printf '"%s"' "$(printf '%s' "$1" | tr '\000-\037' '?' | sed 's/[\\"]/\\&/g')" ;;
    *) printf '"%s"' "$1" ;;
  esac
}

outcome_name() {  # EXIT_CODE: its name in a report; fails for a code the contract does not know
  case $1 in
    0) echo ok ;; 1) echo usage ;; 2) echo missing_tool ;; 3) echo not_found ;; 4) echo network ;;
    5) echo wrong_content ;; 6) echo dest_dir ;; 130) echo interrupted ;; 143) echo terminated ;;
    *) return 1 ;;
  esac
}

os_family() {
  case $(uname -s 2>/dev/null) in
    Linux) echo linux ;; Darwin) echo darwin ;; CYGWIN*|MINGW*|MSYS*) echo windows ;; *) echo other ;;
  esac
}

# first: the folder held nothing of this model; update: a file came from FETCH_MODEL_FROM, or the
# folder held another version of it; later: it held this model already; offline: no site.
run_kind() {
  if [ -n "$UNREACHED" ]; then echo offline
  elif [ "$reused" -gt 0 ] || { [ "$PRIOR_MODEL" = "$MODEL" ] && [ -n "$RESOLVED" ] && [ "$PRIOR_VERSION" != "$RESOLVED" ]; }; then
    echo update
  elif [ "$PRIOR_MODEL" = "$MODEL" ] || [ "$kept" -gt 0 ]; then echo later
  else echo first; fi
}

report_line() {  # EXIT_CODE NAME: this run's report, one line of JSON
  version=null
  [ -n "$RESOLVED" ] && version=$(json_string "$RESOLVED")
  resumed=false
  [ -n "$RESUMED" ] && resumed=true
  took=$(($(date +%s) - START))
  [ "$took" -ge 0 ] || took=0
  [ "$TRIES" -le 10000 ] || TRIES=10000
  [ "$FRESH" -le 10000 ] || FRESH=10000
  printf '{"model": %s, "requested": %s, "version": %s, "client": "fetch-model.sh", "client_version": "%s", ' \
    "$(json_string "$MODEL")" "$(json_string "$VERSION")" "$version" "$CLIENT_VERSION"
  printf '"outcome": %s, "outcome_name": "%s", "run_kind": "%s", "tries": %s, "fresh_links": %s, ' \
    "$1" "$2" "$(run_kind)" "$TRIES" "$FRESH"
  printf '"bytes_downloaded": %s, "bytes_reused": %s, "bytes_delta": 0, "duration_ms": %s, "os": "%s", "resumed": %s}' \
    "$BYTES_DOWN" "$BYTES_REUSED" "$((took * 1000))" "$(os_family)" "$resumed"
}

tell_about_reports() {  # once, on the first run in a folder (no record yet)
  [ -n "$FIRST_IN_FOLDER" ] || return 0
  FIRST_IN_FOLDER=''
  say "this client reports how each run ends to the site (exit code and counts; no path, host or user name); FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1 turns it off"
}

post_report() {  # JSON: one POST, 2 s at most, no retry, the answer ignored; fails when none came
  printf '%s' "$1" | fetch -s -o /dev/null --retry 0 --max-time 2 --proto "$REDIRECT_PROTOCOLS" \
    -H 'Content-Type: application/json' --data-binary @- "$REPORT_URL" >/dev/null 2>&1
}

keep_reports() {  # FILE: the folder's kept reports become the last lines of FILE (none: removed)
  if [ -s "$1" ]; then
    new="$PENDING.$$.tmp"
    { tail -n "$KEPT_REPORTS" "$1" >"$new" && mv -f "$new" "$PENDING"; } 2>/dev/null || rm -f "$new"
  elif [ -f "$PENDING" ]; then
    rm -f "$PENDING"
  fi
}

# At the end of every run: send its report (after the folder's kept ones, oldest first) when the
# site named a report URL; keep it in the folder when the site could not be reached. Never
# changes the exit code.
report_run() {
  [ -z "$NO_REPORT" ] && name=$(outcome_name "$1") || return 0
  count_in_flight
  line=$(report_line "$1" "$name")
  [ "${#line}" -le 4096 ] || return 0
  PENDING="$DEST/.fetch-model.report"
  if [ -n "$REPORT_URL" ]; then
    tell_about_reports
    { [ -f "$PENDING" ] && tail -n "$KEPT_REPORTS" "$PENDING" | head -c 65536; printf '%s\n' "$line"; } >"$TMP/reports" 2>/dev/null
    : >"$TMP/unsent"
    answered=yes
    while IFS= read -r report || [ -n "$report" ]; do
      case $report in '{'*'}') [ "${#report}" -le 4096 ] || continue ;; *) continue ;; esac
      if [ "$answered" = yes ]; then
        post_report "$report" || answered=no  # no answer: the rest wait for a later run
      else
        printf '%s\n' "$report" >>"$TMP/unsent"
      fi
    done <"$TMP/reports"
    keep_reports "$TMP/unsent"
  elif [ -n "$UNREACHED" ] && [ -d "$DEST" ]; then
    tell_about_reports
    { [ -f "$PENDING" ] && tail -n "$KEPT_REPORTS" "$PENDING" | head -c 65536; printf '%s\n' "$line"; } >"$TMP/reports" 2>/dev/null
    keep_reports "$TMP/reports"
  fi
}

# --- one run ----------------------------------------------------------------------------------

parse_options() {
  include='' exclude='' given_include='' given_exclude=''
  while [ $# -gt 0 ]; do
    case $1 in
      --include|--exclude) [ $# -ge 2 ] || usage; option=${1#--} value=$2; shift 2 ;;
      --include=*|--exclude=*) option=${1%%=*}; option=${option#--}; value=${1#*=}; shift ;;
      --) shift; break ;;
      -*) usage ;;
      *) break ;;
    esac
    case $value in
      ''|*:*|*[[:cntrl:]]*) die 1 "--$option '$value': a pattern is not empty and has no ':' or control character" ;;
    esac
    if [ "$option" = include ]; then include=$include${include:+:}$value; given_include=1
    else exclude=$exclude${exclude:+:}$value; given_exclude=1; fi
  done
  [ -n "$given_include" ] && INCLUDE=$include
  [ -n "$given_exclude" ] && EXCLUDE=$exclude
  [ $# -eq 3 ] || usage
  MODEL=$1 VERSION=$2 DEST=$3
  if [ -z "$MODEL" ] || [ -z "$VERSION" ] || [ -z "$DEST" ]; then usage; fi
  case $INCLUDE$EXCLUDE in *[[:cntrl:]]*) die 1 "FETCH_MODEL_INCLUDE/FETCH_MODEL_EXCLUDE hold a control character" ;; esac
}

find_tools() {
  [ -n "$OFFLINE" ] || command -v curl >/dev/null 2>&1 || die 2 "curl is required but not installed"
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
}

lock_dest() {
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
}

# Add the bytes the try under way has received (also when a signal ends the run during it).
count_in_flight() {
  [ -n "$IN_FLIGHT" ] || return 0
  got=0
  [ -f "$IN_FLIGHT" ] && got=$(size_of "$IN_FLIGHT")
  [ "$got" -gt "$IN_FLIGHT_FROM" ] && BYTES_DOWN=$((BYTES_DOWN + got - IN_FLIGHT_FROM))
  IN_FLIGHT=''
}

in_place() {  # INDEX SHA PATH TARGET: a file that needs no download, verified (its bytes reused)
  now=$(facts "$4")
  verified "$1" "$2" "$3" "$now"
  BYTES_REUSED=$((BYTES_REUSED + ${now%% *}))
}

# Keep, hash or reuse each selected file; what must be downloaded goes to $TMP/queue.
check_files() {
  # The record's facts beside each selected file: "INDEX SHA RSIZE RSHA RMTIME RINODE RCTIME PATH".
  if read_record "$RECORD" && [ "$REC_MODEL" = "$MODEL" ] && [ "$REC_VERSION" = "$RESOLVED" ]; then :
  else : >"$TMP/record.files"; REC_VERIFIED=''; fi
  awk -F "$TAB" -v OFS="$TAB" '
    FILENAME == ARGV[1] { seen[$6] = $1 OFS $2 OFS $3 OFS $4 OFS $5; next }
    { print $1, $2, ($3 in seen ? seen[$3] : "-" OFS "-" OFS "-" OFS "-" OFS "-"), $3 }' \
    "$TMP/record.files" "$TMP/selected" >"$TMP/plan"
  : >"$TMP/queue"
  : >"$TMP/verified"
  while IFS="$TAB" read -r index expected rsize rsha rmtime rinode rctime path; do
    target="$DEST/$path"
    if [ -f "$target" ]; then
      if [ -z "$VERIFY" ] && [ "$rsha" = "$expected" ] && same_facts "$target" "$rsize" "$rmtime" "$rinode" "$rctime"; then
        in_place "$index" "$expected" "$path" "$target"
        kept=$((kept + 1))
        say "$path: already there, verified at $REC_VERIFIED"
        continue
      fi
      if [ "$(sha256_stdin <"$target")" = "$expected" ]; then
        protect "$target"
        in_place "$index" "$expected" "$path" "$target"
        kept=$((kept + 1))
        say "$path: already there, verified"
        continue
      fi
      [ "$rsha" = "$expected" ] && say "$path: changed since it was verified; fetching it again"
      rm -f "$target"  # present but wrong: never leave it there
    fi
    dir=$(dirname "$target")
    mkdir -p "$dir" 2>/dev/null || die 6 "cannot create $dir"
    if [ -n "$FROM" ] && source=$(reusable "$path" "$expected"); then
      place_copy "$source" "$target" || die 6 "cannot copy $source to $target"
      in_place "$index" "$expected" "$path" "$target"
      reused=$((reused + 1))
      say "$path: reused $source, SHA-256 verified"
      continue
    fi
    printf '%s\t%s\t%s\n' "$index" "$expected" "$path" >>"$TMP/queue"
  done <"$TMP/plan"
}

# Learn the published size of each queued file, check the free space, then download them.
download_queue() {
  missing=0
  : >"$TMP/sized"
  while IFS="$TAB" read -r index expected path; do
    stable="$SITE/models/$(urlencode "$MODEL")/$(urlencode "$RESOLVED")/$(urlencode "$path")"
    if ! published_facts "$stable"; then
      say "$path: the site did not tell its size; FAILED"
      failed=4
      continue
    fi
    if [ -n "$PUBLISHED" ] && [ "$PUBLISHED" != "$expected" ]; then
      say "$path: the site lists SHA-256 $expected but serves $PUBLISHED; FAILED"
      failed=5
      continue
    fi
    target="$DEST/$path"
    part="$(dirname "$target")/.$(basename "$target").part"
    have=0
    [ -f "$part" ] && have=$(size_of "$part")
    [ "$have" -gt "$SIZE" ] && have=0
    missing=$((missing + SIZE - have))
    printf '%s\t%s\t%s\t%s\n' "$index" "$expected" "$SIZE" "$path" >>"$TMP/sized"
  done <"$TMP/queue"
  check_free_space "$missing"
  while IFS="$TAB" read -r index expected SIZE path; do
    target="$DEST/$path"
    part="$(dirname "$target")/.$(basename "$target").part"
    stable="$SITE/models/$(urlencode "$MODEL")/$(urlencode "$RESOLVED")/$(urlencode "$path")"
    download "$path" "$expected" "$part" "$stable" </dev/null
    outcome=$?
    if [ "$outcome" -eq 0 ]; then
      protect "$part"
      mv -f "$part" "$target" || die 6 "cannot move $path into place"
      verified "$index" "$expected" "$path" "$(facts "$target")"
      downloaded=$((downloaded + 1))
      say "$path: downloaded, SHA-256 verified"
    else
      rm -f "$part"  # never keep bytes that are not the file
      [ "$outcome" -eq 6 ] && die 6 "$path: no space left on device in $DEST; removed the partial download"
      failed=$outcome
      say "$path: FAILED"
    fi
  done <"$TMP/sized"
}

main() {
  START=$(date +%s)
  MODEL='' VERSION='' DEST='' RESOLVED='' REPORT_URL='' UNREACHED='' RESUMED='' FIRST_IN_FOLDER=''
  PRIOR_MODEL='' PRIOR_VERSION='' IN_FLIGHT='' IN_FLIGHT_FROM=0 TRIES=0 FRESH=0 BYTES_DOWN=0 BYTES_REUSED=0
  failed=0 downloaded=0 reused=0 kept=0
  parse_options "$@"
  find_tools
  TMP=$(mktemp -d 2>/dev/null || mktemp -d -t fetch-model) || die 6 "cannot create a temporary directory"
  LOCK=''
  cleanup() {
    code=$?
    trap ':' INT TERM  # a Ctrl-C now stops the report's POST, not the cleanup
    report_run "$code"
    [ -n "$LOCK" ] && rm -rf "$LOCK"
    rm -rf "$TMP"
  }
  trap cleanup EXIT
  # A progress bar on a terminal; in logs, only our own one line per file or failure.
  if [ -t 2 ]; then PROGRESS=--progress-bar; CURL_ERRORS=/dev/stderr; else PROGRESS=--silent; CURL_ERRORS=$TMP/error; fi
  trap 'exit 130' INT
  trap 'exit 143' TERM
  detect_stat
  RECORD="$DEST/.fetch-model.record"
  if read_record "$RECORD"; then PRIOR_MODEL=$REC_MODEL PRIOR_VERSION=$REC_VERSION
  elif [ ! -f "$DEST/.fetch-model.json" ]; then FIRST_IN_FOLDER=1; fi  # no client made this folder

  if [ -n "$OFFLINE" ]; then
    UNREACHED=1
    usable_copy || die 4 "$MODEL $VERSION has no complete verified copy in $DEST"
    RESOLVED=$REC_VERSION BYTES_REUSED=$(recorded_bytes)
    die 0 "offline: using $MODEL $REC_VERSION as verified at $REC_VERIFIED"
  fi
  # A complete copy need not wait long for a site that does not answer (a firewall that drops
  # packets, a hung proxy): it starts within seconds instead of after curl's long timeouts.
  SUMS_LIMITS=''
  usable_copy facts-only && SUMS_LIMITS="--connect-timeout 5 --max-time $SUMS_WAIT"
  if ! get_sums; then
    UNREACHED=1
    if copy_is_usable; then
      RESOLVED=$REC_VERSION BYTES_REUSED=$(recorded_bytes)
      die 0 "warning: cannot reach $SITE ($REASON); using $MODEL $REC_VERSION as verified at $REC_VERIFIED"
    fi
    die 4 "cannot reach $SITE: $REASON"
  fi
  # A 404 or 410 may name the report URL too (and a 410 the withdrawn version): that run is reported.
  REPORT_URL=$(header X-Report-URL "$TMP/headers")
  case $REPORT_URL in http://*|https://*) ;; *) REPORT_URL='' ;; esac
  case $REPORT_URL in *[[:space:][:cntrl:]]*) REPORT_URL='' ;; esac
  case $STATUS in
    200) ;;
    404|410)
      RESOLVED=$(header X-Artifact-Version "$TMP/headers")
      case $RESOLVED in *[!A-Za-z0-9._+-]*) RESOLVED='' ;; esac
      [ -n "$REPORT_URL" ] && [ -z "$NO_REPORT" ] && tell_about_reports  # before the error: its line stays last
      detail=$(head -c 65536 "$TMP/sums" | sed -n 's/.*"detail": *"\([^"]*\)".*/\1/p' | head -n 1)
      die 3 "${detail:-$MODEL $VERSION: not found ($STATUS)}" ;;
    *) die 4 "$sums_url answered HTTP $STATUS" ;;
  esac
  RESOLVED=$(header X-Artifact-Version "$TMP/headers")
  case $RESOLVED in
    ''|*[!A-Za-z0-9._+-]*) RESOLVED=''; die 4 "$sums_url did not name the version (is $SITE a Model Releases site?)" ;;
  esac
  select_files  # a malformed or unsafe answer, or no file selected: one line, nothing written
  if [ "$RESOLVED" = "$VERSION" ]; then
    say "$MODEL $RESOLVED"
  else
    say "$MODEL $VERSION is $RESOLVED"
  fi
  if [ "$(header X-Artifact-Status "$TMP/headers")" = yanked ]; then
    reason=$(urldecode "$(header X-Artifact-Yanked-Reason "$TMP/headers")")
    say "warning: $MODEL $RESOLVED is yanked: ${reason:-no reason given}"
  fi
  [ -n "$REPORT_URL" ] && [ -z "$NO_REPORT" ] && tell_about_reports

  mkdir -p "$DEST" 2>/dev/null || die 6 "cannot create $DEST"
  lock_dest
  check_files
  [ -s "$TMP/queue" ] && download_queue
  if [ "$failed" -ne 0 ]; then
    die "$failed" "$MODEL $RESOLVED: not every file could be fetched; run again to resume"
  fi
  write_record
  say "$MODEL $RESOLVED: $downloaded downloaded, $reused reused, $kept already there, in $DEST"
}

# The whole script is read before it runs (it may arrive on stdin: curl ... | sh).
main "$@"
