/*
 * goauth_plugin.c - a Mosquitto 2.0 plugin (API v5) that asks an HTTP backend exactly the way
 * mosquitto-go-auth 3.0.0's HTTP backend does. lockerd's test suite loads it into a real
 * Mosquitto in place of go-auth, which cannot be built here (see README.md beside this file and
 * research/goauth.md). Written from go-auth's documented and observed behaviour; no go-auth code
 * is reproduced. "go-auth" below always means version 3.0.0.
 *
 * What it mirrors, in short:
 *   - CONNECT: one POST to http_getuser_uri with {"clientid","password","username"}.
 *   - every ACL check: POST http_superuser_uri {"username"} first (when that uri is set and not
 *     empty); a 2xx grants everything without asking http_aclcheck_uri; otherwise POST
 *     http_aclcheck_uri {"acc","clientid","topic","username"}.
 *   - status response mode: 2xx allow, other status < 500 deny, >= 500 or any transport
 *     failure = error, which mosquitto gets as MOSQ_ERR_UNKNOWN (not MOSQ_ERR_AUTH / _ACL_DENIED).
 *   - the optional in-memory cache keyed like go-auth's go-cache store, with its jitter.
 *   - go-auth's backend chain (auth_opt_backends files,http): its "files" backend (a password
 *     file of PBKDF2 hashes and an ACL file) asked before or after the HTTP backend, with
 *     auth_opt_<backend>_register choosing which checks each backend answers.
 * And what it does better on purpose: the mosq_secret query parameter never reaches a log.
 *
 * Build: gcc -Wall -Wextra -Werror -O2 -fPIC -shared -o goauth_plugin.so goauth_plugin.c -lcurl -lcrypto
 */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

/* Debian's mosquitto-dev ships the broker headers without mosquitto.h (that one is in
 * libmosquitto-dev). Use it when present; otherwise define the few constants we need, with the
 * values of mosquitto 2.0.11's include/mosquitto.h (part of the plugin ABI, so they are stable). */
#if defined(__has_include)
#if __has_include(<mosquitto.h>)
#include <mosquitto.h>
#define GOAUTH_HAVE_MOSQUITTO_H 1
#endif
#endif
#ifndef GOAUTH_HAVE_MOSQUITTO_H
enum {
	MOSQ_ERR_SUCCESS = 0,
	MOSQ_ERR_NOMEM = 1,
	MOSQ_ERR_INVAL = 3,
	MOSQ_ERR_AUTH = 11,
	MOSQ_ERR_ACL_DENIED = 12,
	MOSQ_ERR_UNKNOWN = 13,
};
#define MOSQ_LOG_INFO (1 << 0)
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_WARNING (1 << 2)
#define MOSQ_LOG_ERR (1 << 3)
#define MOSQ_LOG_DEBUG (1 << 4)
#endif
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* go-auth's JSON-mode User-Agent is "mosquitto-<LIBMOSQUITTO_MAJOR.MINOR.REVISION of the headers
 * it was compiled against>" (live: mosquitto-2.0.11). Without mosquitto.h the build passes the
 * version of the installed broker as GOAUTH_MOSQUITTO_VERSION. */
#define GOAUTH_STR2(x) #x
#define GOAUTH_STR(x) GOAUTH_STR2(x)
#ifndef GOAUTH_MOSQUITTO_VERSION
#ifdef LIBMOSQUITTO_MAJOR
#define GOAUTH_MOSQUITTO_VERSION \
	GOAUTH_STR(LIBMOSQUITTO_MAJOR) "." GOAUTH_STR(LIBMOSQUITTO_MINOR) "." GOAUTH_STR(LIBMOSQUITTO_REVISION)
#else
#define GOAUTH_MOSQUITTO_VERSION "2.0.11"
#endif
#endif

#define LOG_PREFIX "goauth_plugin: "
/* Go's form posts (http.Client.PostForm) always carry Go's own User-Agent. */
#define GO_FORM_USER_AGENT "Go-http-client/1.1"
/* A text/json response body larger than this is treated as a transport error (go-auth reads any
 * size; nothing sane is this big). Status mode never stores the body. */
#define MAX_RESPONSE_BODY (1024 * 1024)
/* Go's encoding/json refuses documents nested deeper than this. */
#define GO_JSON_MAX_DEPTH 10000
/* jellydator/ttlcache (go-auth's "go-cache" store) treats a TTL of 0 as "the cache's default",
 * which go-auth creates as 2 * 30 s. */
#define TTLCACHE_DEFAULT_TTL_S 60

/* go-auth's three answers (go-auth.go AuthRejected / AuthGranted / AuthError). */
enum outcome { OUTCOME_DENY = 0, OUTCOME_ALLOW = 1, OUTCOME_ERROR = 2 };
enum check_kind { CHECK_USER, CHECK_SUPERUSER, CHECK_ACL };
enum params_mode { PARAMS_JSON, PARAMS_FORM };
enum response_mode { RESPONSE_STATUS, RESPONSE_TEXT, RESPONSE_JSON };
enum http_method { METHOD_POST, METHOD_GET, METHOD_PUT };
/* go-auth's backends this plugin has (backends/backends.go names them "files" and "http"). */
enum backend_kind { BACKEND_FILES, BACKEND_HTTP };
#define MAX_BACKENDS 4

static const char *const outcome_names[] = {"deny", "allow", "error"};
static const char *const check_names[] = {"user", "superuser", "acl"};
static const char *const method_names[] = {"POST", "GET", "PUT"};

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffer. An allocation failure sets `failed`; callers treat that as an error. */

struct buf {
	char *data;
	size_t len;
	size_t cap;
	bool failed;
};

static void buf_reserve(struct buf *b, size_t extra)
{
	size_t need;
	size_t cap;
	char *data;

	if(b->failed) return;
	if(extra > SIZE_MAX - b->len - 1){
		b->failed = true;
		return;
	}
	need = b->len + extra + 1;
	if(need <= b->cap) return;
	cap = b->cap ? b->cap : 256;
	while(cap < need){
		cap = (cap > SIZE_MAX / 2) ? need : cap * 2;
	}
	data = realloc(b->data, cap);
	if(!data){
		b->failed = true;
		return;
	}
	b->data = data;
	b->cap = cap;
}

static void buf_append(struct buf *b, const char *s, size_t n)
{
	buf_reserve(b, n);
	if(b->failed) return;
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

static void buf_putc(struct buf *b, char c)
{
	buf_append(b, &c, 1);
}

__attribute__((format(printf, 2, 3)))
static void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if(n < 0){
		b->failed = true;
		return;
	}
	buf_reserve(b, (size_t)n);
	if(b->failed) return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding, byte for byte as Go does it. */

/* Length of the valid UTF-8 sequence at s (1-4 bytes), with *rune set; 0 when the bytes there are
 * not valid UTF-8 (Go's utf8.DecodeRune then yields RuneError with width 1). Same acceptance
 * ranges as Go: no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_decode(const unsigned char *s, size_t avail, uint32_t *rune)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xBF;
	size_t n, i;
	uint32_t r;

	if(c < 0x80){
		*rune = c;
		return 1;
	}else if(c < 0xC2){
		return 0;
	}else if(c < 0xE0){
		n = 2;
		r = c & 0x1F;
	}else if(c < 0xF0){
		n = 3;
		r = c & 0x0F;
		if(c == 0xE0) lo = 0xA0;
		if(c == 0xED) hi = 0x9F;
	}else if(c < 0xF5){
		n = 4;
		r = c & 0x07;
		if(c == 0xF0) lo = 0x90;
		if(c == 0xF4) hi = 0x8F;
	}else{
		return 0;
	}
	if(avail < n) return 0;
	for(i = 1; i < n; i++){
		unsigned char cc = s[i];
		if(i == 1 ? (cc < lo || cc > hi) : (cc < 0x80 || cc > 0xBF)) return 0;
		r = (r << 6) | (cc & 0x3F);
	}
	*rune = r;
	return n;
}

/* A JSON string literal as Go's json.Marshal writes it (escapeHTML on, Go >= 1.22, which go-auth
 * 3.0.0's go.mod requires): `<`, `>`, `&` as \u003c \u003e \u0026; \n \r \t \b \f short; other
 * control bytes as \u00XX (lowercase hex); U+2028/U+2029 escaped; each byte of invalid UTF-8
 * replaced by \ufffd; everything else, DEL and non-ASCII included, copied as is. */
static void json_append_string(struct buf *b, const char *str)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)str;
	size_t len = strlen(str);
	size_t i = 0;
	size_t start = 0; /* start of the pending run of bytes to copy verbatim */

	buf_putc(b, '"');
	while(i < len){
		unsigned char c = s[i];
		const char *esc = NULL;
		char ubuf[7];
		size_t width = 1;

		if(c < 0x80){
			if(c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'){
				i++;
				continue;
			}
			switch(c){
				case '"': esc = "\\\""; break;
				case '\\': esc = "\\\\"; break;
				case '\n': esc = "\\n"; break;
				case '\r': esc = "\\r"; break;
				case '\t': esc = "\\t"; break;
				case '\b': esc = "\\b"; break;
				case '\f': esc = "\\f"; break;
				default:
					snprintf(ubuf, sizeof(ubuf), "\\u00%c%c", hex[c >> 4], hex[c & 0xF]);
					esc = ubuf;
			}
		}else{
			uint32_t rune = 0;
			width = utf8_decode(s + i, len - i, &rune);
			if(width == 0){
				esc = "\\ufffd";
				width = 1;
			}else if(rune == 0x2028){
				esc = "\\u2028";
			}else if(rune == 0x2029){
				esc = "\\u2029";
			}else{
				i += width;
				continue;
			}
		}
		buf_append(b, str + start, i - start);
		buf_puts(b, esc);
		i += width;
		start = i;
	}
	buf_append(b, str + start, i - start);
	buf_putc(b, '"');
}

/* url.QueryEscape: A-Z a-z 0-9 - _ . ~ stay, space becomes +, every other byte %XX (uppercase). */
static void form_append_escaped(struct buf *b, const char *str)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *s;

	for(s = (const unsigned char *)str; *s; s++){
		unsigned char c = *s;
		if((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
				|| c == '-' || c == '_' || c == '.' || c == '~'){
			buf_putc(b, (char)c);
		}else if(c == ' '){
			buf_putc(b, '+');
		}else{
			char enc[3] = {'%', hex[c >> 4], hex[c & 0xF]};
			buf_append(b, enc, 3);
		}
	}
}

/* Copy `in` to `out`, replacing the value of every mosq_secret query parameter with ***.
 * go-auth logs whole request URLs (secret included) on errors; this plugin must never. */
static void redact_secret(struct buf *out, const char *in)
{
	static const char key[] = "mosq_secret=";
	const size_t keylen = sizeof(key) - 1;
	const char *p = in;

	while(*p){
		if(strncasecmp(p, key, keylen) == 0){
			buf_append(out, p, keylen);
			buf_puts(out, "***");
			p += keylen;
			while(*p && !strchr("&#\"' \t\r\n", *p)) p++;
		}else{
			buf_putc(out, *p);
			p++;
		}
	}
	if(!out->data) buf_append(out, "", 0);
}

/* strconv.Atoi / ParseInt(s, 10, 64): optional sign, decimal digits, nothing else. */
static bool parse_go_int(const char *s, long long *out)
{
	char *end = NULL;
	long long v;
	const char *digits = s;

	if(*digits == '+' || *digits == '-') digits++;
	if(*digits < '0' || *digits > '9') return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if(errno != 0 || !end || *end != '\0') return false;
	*out = v;
	return true;
}

/* go-auth's `strings.Replace(opt, " ", "", -1) == "true"` for cache and use_clientid_as_username. */
static bool is_true_ignoring_spaces(const char *s)
{
	char tmp[8];
	size_t n = 0;

	for(; *s; s++){
		if(*s == ' ') continue;
		if(n >= sizeof(tmp) - 1) return false;
		tmp[n++] = *s;
	}
	tmp[n] = '\0';
	return strcmp(tmp, "true") == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* go-auth's json response mode: json.Unmarshal(body, &HTTPResponse{Ok bool; Error string}).
 * Syntax errors and type errors (e.g. "ok": 1, or a top-level array) are errors; a valid object
 * without a true "ok" is a deny. Go matches field names case-insensitively (bytes.EqualFold, so
 * the Kelvin sign U+212A matches 'k'); the last duplicate wins. */

struct jparse {
	const unsigned char *s;
	size_t len;
	size_t pos;
	bool type_error;
};

static void jp_ws(struct jparse *p)
{
	while(p->pos < p->len){
		unsigned char c = p->s[p->pos];
		if(c != ' ' && c != '\t' && c != '\r' && c != '\n') break;
		p->pos++;
	}
}

static bool jp_literal(struct jparse *p, const char *lit)
{
	size_t n = strlen(lit);
	if(p->len - p->pos < n || memcmp(p->s + p->pos, lit, n) != 0) return false;
	p->pos += n;
	return true;
}

static int jp_hex(unsigned char c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	if(c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* Parses a string at p->pos (which is '"'). Keeps up to `max` decoded runes in runes[] and the
 * total rune count in *count (runes beyond `max` are only counted). */
static bool jp_string(struct jparse *p, uint32_t *runes, size_t max, size_t *count)
{
	size_t n = 0;

	p->pos++; /* opening quote */
	while(p->pos < p->len){
		unsigned char c = p->s[p->pos];
		uint32_t rune;

		if(c == '"'){
			p->pos++;
			if(count) *count = n;
			return true;
		}
		if(c < 0x20) return false;
		if(c == '\\'){
			if(p->pos + 1 >= p->len) return false;
			c = p->s[p->pos + 1];
			if(c == 'u'){
				int i;
				rune = 0;
				if(p->len - p->pos < 6) return false;
				for(i = 0; i < 4; i++){
					int h = jp_hex(p->s[p->pos + 2 + (size_t)i]);
					if(h < 0) return false;
					rune = (rune << 4) | (uint32_t)h;
				}
				/* Surrogates only matter for matching "ok"/"error", which they never do. */
				if(rune >= 0xD800 && rune <= 0xDFFF) rune = 0xFFFD;
				p->pos += 6;
			}else{
				if(!strchr("\"\\/bfnrt", c) || c == '\0') return false;
				rune = (c == 'b') ? '\b' : (c == 'f') ? '\f' : (c == 'n') ? '\n'
					: (c == 'r') ? '\r' : (c == 't') ? '\t' : c;
				p->pos += 2;
			}
		}else{
			size_t w = utf8_decode(p->s + p->pos, p->len - p->pos, &rune);
			if(w == 0){
				rune = 0xFFFD;
				w = 1;
			}
			p->pos += w;
		}
		if(runes && n < max) runes[n] = rune;
		n++;
	}
	return false;
}

static bool jp_number(struct jparse *p)
{
	size_t start;

	if(p->pos < p->len && p->s[p->pos] == '-') p->pos++;
	if(p->pos >= p->len) return false;
	if(p->s[p->pos] == '0'){
		p->pos++;
	}else if(p->s[p->pos] >= '1' && p->s[p->pos] <= '9'){
		while(p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
	}else{
		return false;
	}
	if(p->pos < p->len && p->s[p->pos] == '.'){
		p->pos++;
		start = p->pos;
		while(p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
		if(p->pos == start) return false;
	}
	if(p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')){
		p->pos++;
		if(p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
		start = p->pos;
		while(p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
		if(p->pos == start) return false;
	}
	return true;
}

enum jtype { JT_NONE, JT_NULL, JT_TRUE, JT_FALSE, JT_NUMBER, JT_STRING, JT_ARRAY, JT_OBJECT };

static bool jp_value(struct jparse *p, int depth, enum jtype *type, bool *ok_field);

/* Case-insensitive field match as Go's bytes.EqualFold does it for these two names. */
static bool rune_is(uint32_t r, char lower)
{
	if(r == (uint32_t)lower || r == (uint32_t)(lower - 'a' + 'A')) return true;
	return lower == 'k' && r == 0x212A; /* KELVIN SIGN folds to k */
}

static bool key_matches(const uint32_t *runes, size_t count, const char *name)
{
	size_t i, n = strlen(name);
	if(count != n) return false;
	for(i = 0; i < n; i++){
		if(!rune_is(runes[i], name[i])) return false;
	}
	return true;
}

static bool jp_container(struct jparse *p, int depth, bool is_object, bool *ok_field)
{
	bool top_object = (depth == 1 && is_object && ok_field);
	char close = is_object ? '}' : ']';

	if(depth > GO_JSON_MAX_DEPTH) return false;
	p->pos++; /* [ or { */
	jp_ws(p);
	if(p->pos < p->len && p->s[p->pos] == close){
		p->pos++;
		return true;
	}
	for(;;){
		enum jtype type;
		uint32_t key[6];
		size_t keylen = 0;
		bool is_ok = false, is_error = false;

		if(is_object){
			jp_ws(p);
			if(p->pos >= p->len || p->s[p->pos] != '"') return false;
			if(!jp_string(p, key, 6, &keylen)) return false;
			if(top_object){
				is_ok = key_matches(key, keylen, "ok");
				is_error = key_matches(key, keylen, "error");
			}
			jp_ws(p);
			if(p->pos >= p->len || p->s[p->pos] != ':') return false;
			p->pos++;
		}
		if(!jp_value(p, depth, &type, NULL)) return false;
		if(is_ok){
			if(type == JT_TRUE) *ok_field = true;
			else if(type == JT_FALSE) *ok_field = false;
			else if(type != JT_NULL) p->type_error = true; /* null leaves the field alone */
		}else if(is_error && type != JT_STRING && type != JT_NULL){
			p->type_error = true;
		}
		jp_ws(p);
		if(p->pos >= p->len) return false;
		if(p->s[p->pos] == ','){
			p->pos++;
			continue;
		}
		if(p->s[p->pos] == close){
			p->pos++;
			return true;
		}
		return false;
	}
}

static bool jp_value(struct jparse *p, int depth, enum jtype *type, bool *ok_field)
{
	unsigned char c;

	jp_ws(p);
	if(p->pos >= p->len) return false;
	c = p->s[p->pos];
	switch(c){
		case '{':
			*type = JT_OBJECT;
			return jp_container(p, depth + 1, true, ok_field);
		case '[':
			*type = JT_ARRAY;
			return jp_container(p, depth + 1, false, NULL);
		case '"':
			*type = JT_STRING;
			return jp_string(p, NULL, 0, NULL);
		case 't':
			*type = JT_TRUE;
			return jp_literal(p, "true");
		case 'f':
			*type = JT_FALSE;
			return jp_literal(p, "false");
		case 'n':
			*type = JT_NULL;
			return jp_literal(p, "null");
		default:
			*type = JT_NUMBER;
			return jp_number(p);
	}
}

static enum outcome json_response_outcome(const char *body, size_t len)
{
	struct jparse p = {(const unsigned char *)body, len, 0, false};
	enum jtype type = JT_NONE;
	bool ok_field = false;

	if(!jp_value(&p, 0, &type, &ok_field)) return OUTCOME_ERROR;
	jp_ws(&p);
	if(p.pos != p.len) return OUTCOME_ERROR; /* "invalid character after top-level value" */
	if(type != JT_OBJECT && type != JT_NULL) return OUTCOME_ERROR; /* cannot unmarshal X into struct */
	if(p.type_error) return OUTCOME_ERROR;
	return ok_field ? OUTCOME_ALLOW : OUTCOME_DENY;
}

/* ------------------------------------------------------------------------------------------ */
/* The cache: go-auth's go-cache store (a jellydator/ttlcache). One table for both kinds of
 * record, keyed by go-auth's own key strings: "auth-<username>-<password>" (no clientid) and
 * "acl-<username>-<topic>-<clientid>-<acc>" (cache/cache.go toAuthRecord/toACLRecord; go-auth
 * then hashes them, which changes nothing about which checks share an entry - including its
 * ambiguity: user "a-b" + password "c" and user "a" + password "b-c" share one record). Entries
 * are not refreshed on a hit (go-auth's default cache_refresh false); expired entries are
 * dropped when met and in sweeps. */

struct cache_entry {
	struct cache_entry *next;
	uint64_t hash;
	int64_t expires_ns; /* INT64_MAX: never (a negative TTL, ttlcache's "no TTL") */
	bool granted;
	size_t keylen;
	char key[];
};

struct cache {
	struct cache_entry **buckets;
	size_t nbuckets;
	size_t count;
	size_t sweep_at;
};

static int64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	size_t i;
	for(i = 0; i < n; i++){
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static void cache_free(struct cache *c)
{
	size_t i;
	for(i = 0; i < c->nbuckets; i++){
		struct cache_entry *e = c->buckets[i];
		while(e){
			struct cache_entry *next = e->next;
			free(e);
			e = next;
		}
	}
	free(c->buckets);
	memset(c, 0, sizeof(*c));
}

static void cache_sweep(struct cache *c, int64_t now)
{
	size_t i;
	for(i = 0; i < c->nbuckets; i++){
		struct cache_entry **link = &c->buckets[i];
		while(*link){
			struct cache_entry *e = *link;
			if(e->expires_ns < now){
				*link = e->next;
				free(e);
				c->count--;
			}else{
				link = &e->next;
			}
		}
	}
	c->sweep_at = c->count * 2 > 1024 ? c->count * 2 : 1024;
}

static void cache_grow(struct cache *c)
{
	size_t n = c->nbuckets ? c->nbuckets * 2 : 1024;
	struct cache_entry **buckets = calloc(n, sizeof(*buckets));
	size_t i;

	if(!buckets) return; /* keep the old table; chains just get longer */
	for(i = 0; i < c->nbuckets; i++){
		struct cache_entry *e = c->buckets[i];
		while(e){
			struct cache_entry *next = e->next;
			e->next = buckets[e->hash % n];
			buckets[e->hash % n] = e;
			e = next;
		}
	}
	free(c->buckets);
	c->buckets = buckets;
	c->nbuckets = n;
}

static bool cache_get(struct cache *c, const struct buf *key, bool *granted)
{
	uint64_t h;
	struct cache_entry **link;
	int64_t now = monotonic_ns();

	if(!c->nbuckets) return false;
	h = fnv1a(key->data, key->len);
	for(link = &c->buckets[h % c->nbuckets]; *link; link = &(*link)->next){
		struct cache_entry *e = *link;
		if(e->hash != h || e->keylen != key->len || memcmp(e->key, key->data, key->len) != 0) continue;
		if(e->expires_ns < now){ /* ttlcache: expired when expiresAt is before now */
			*link = e->next;
			free(e);
			c->count--;
			return false;
		}
		*granted = e->granted;
		return true;
	}
	return false;
}

/* go-auth's expirationWithJitter (cache/cache.go): the TTL plus a uniform random offset in
 * [-jitter, jitter), a result below 0 becoming 0. go-auth clamps the jitter to the TTL when it
 * reads the options (setCache). Returns nanoseconds; negative means "no TTL". */
static int64_t ttl_with_jitter_ns(long long ttl_s, long long jitter_s)
{
	int64_t ttl_ns, jitter_ns, offset;

	if(ttl_s < 0) return -1;
	if(ttl_s > INT64_MAX / 2000000000) ttl_s = INT64_MAX / 2000000000;
	ttl_ns = (int64_t)ttl_s * 1000000000;
	if(jitter_s <= 0) return ttl_ns;
	if(jitter_s > ttl_s) jitter_s = ttl_s;
	jitter_ns = (int64_t)jitter_s * 1000000000;
	/* two random() calls give 62 bits, plenty for a uniform draw below 2 * jitter_ns */
	offset = (int64_t)((((uint64_t)random() << 31) ^ (uint64_t)random()) % (uint64_t)(2 * jitter_ns))
		- jitter_ns;
	return ttl_ns + offset < 0 ? 0 : ttl_ns + offset;
}

static void cache_set(struct cache *c, const struct buf *key, bool granted, int64_t ttl_ns)
{
	uint64_t h;
	struct cache_entry *e;
	int64_t now = monotonic_ns();
	int64_t expires;

	/* jellydator/ttlcache: 0 is the cache's default TTL, a negative one none at all */
	if(ttl_ns == 0) ttl_ns = (int64_t)TTLCACHE_DEFAULT_TTL_S * 1000000000;
	if(ttl_ns < 0 || ttl_ns > INT64_MAX - now){
		expires = INT64_MAX;
	}else{
		expires = now + ttl_ns;
	}
	if(c->count >= c->sweep_at) cache_sweep(c, now);
	if(c->count >= c->nbuckets) cache_grow(c);
	if(!c->nbuckets) return;

	h = fnv1a(key->data, key->len);
	for(e = c->buckets[h % c->nbuckets]; e; e = e->next){
		if(e->hash == h && e->keylen == key->len && memcmp(e->key, key->data, key->len) == 0){
			e->granted = granted;
			e->expires_ns = expires;
			return;
		}
	}
	e = malloc(sizeof(*e) + key->len);
	if(!e) return; /* not caching is always safe */
	e->hash = h;
	e->expires_ns = expires;
	e->granted = granted;
	e->keylen = key->len;
	memcpy(e->key, key->data, key->len);
	e->next = c->buckets[h % c->nbuckets];
	c->buckets[h % c->nbuckets] = e;
	c->count++;
}

/* ------------------------------------------------------------------------------------------ */
/* Plugin state and configuration. */

struct plugin {
	mosquitto_plugin_id_t *identifier;
	/* go-auth options (auth_opt_<name> there, plugin_opt_<name> here) */
	char *host;
	char *port;
	char *user_uri;
	char *superuser_uri; /* NULL or empty: no superuser request, superuser = false */
	char *acl_uri;
	char *user_agent; /* JSON mode only, as in go-auth */
	enum params_mode params_mode;
	enum response_mode response_mode;
	enum http_method method;
	long long timeout_s; /* <= 0: no timeout (Go's http.Client.Timeout 0) */
	bool use_cache;
	long long auth_ttl_s;
	long long acl_ttl_s;
	long long auth_jitter_s;
	long long acl_jitter_s;
	long long retry_count;
	/* auth_opt_backends, in order, and which checks each answers (<prefix>_register) */
	enum backend_kind backends[MAX_BACKENDS];
	int nbackends;
	bool user_checker[MAX_BACKENDS];
	bool superuser_checker[MAX_BACKENDS];
	bool acl_checker[MAX_BACKENDS];
	char *backends_opt;
	char *files_register;
	char *http_register;
	char *files_password_path;
	char *files_acl_path;
	bool has_http;
	bool salt_utf8; /* hasher_salt_encoding utf-8 (default base64) */
	struct files *files;
	bool disable_superuser;
	bool use_clientid_as_username;
	/* mosquitto's auth_plugin_deny_special_chars, which mosquitto 2.0.11 applies to v4 plugins
	 * like go-auth but not to v5 callbacks (security.c), so we apply it ourselves. */
	bool deny_special_chars;
	/* ours */
	char *log_path;
	FILE *log;

	bool curl_global; /* curl_global_init succeeded */
	CURL *curl;
	struct curl_slist *json_headers;
	struct curl_slist *form_headers;
	char curl_error[CURL_ERROR_SIZE];
	struct cache cache;
};

/* Every line this plugin gives mosquitto's log passes through here, redacted. */
__attribute__((format(printf, 2, 3)))
static void plog(int level, const char *fmt, ...)
{
	struct buf raw = {0}, safe = {0};
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if(n < 0) return;
	buf_reserve(&raw, (size_t)n);
	if(!raw.failed){
		va_start(ap, fmt);
		vsnprintf(raw.data, (size_t)n + 1, fmt, ap);
		va_end(ap);
		raw.len = (size_t)n;
		redact_secret(&safe, raw.data);
		if(!safe.failed) mosquitto_log_printf(level, LOG_PREFIX "%s", safe.data);
	}
	buf_free(&raw);
	buf_free(&safe);
}

struct check_args {
	const char *username;
	const char *password;
	const char *clientid;
	const char *topic;
	int acc;
};

/* One JSON object per line in log_file: {"ts", "event", "check", ...}. The password is never
 * written; URLs are redacted. */
static void rlog_begin(struct buf *line, const char *event, enum check_kind kind,
		const struct check_args *a)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	buf_printf(line, "{\"ts\":%lld.%06ld,\"event\":", (long long)ts.tv_sec, ts.tv_nsec / 1000);
	json_append_string(line, event);
	buf_puts(line, ",\"check\":");
	json_append_string(line, check_names[kind]);
	if(a->username){
		buf_puts(line, ",\"username\":");
		json_append_string(line, a->username);
	}
	if(kind != CHECK_SUPERUSER && a->clientid){
		buf_puts(line, ",\"clientid\":");
		json_append_string(line, a->clientid);
	}
	if(kind == CHECK_ACL){
		if(a->topic){
			buf_puts(line, ",\"topic\":");
			json_append_string(line, a->topic);
		}
		buf_printf(line, ",\"acc\":%d", a->acc);
	}
}

static void rlog_end(struct plugin *p, struct buf *line, enum outcome outcome)
{
	buf_puts(line, ",\"outcome\":");
	json_append_string(line, outcome_names[outcome]);
	buf_puts(line, "}\n");
	if(p->log && !line->failed){
		fwrite(line->data, 1, line->len, p->log);
		fflush(p->log);
	}
	buf_free(line);
}

static void rlog_simple(struct plugin *p, const char *event, enum check_kind kind,
		const struct check_args *a, const char *reason, enum outcome outcome)
{
	struct buf line = {0};
	if(!p->log) return;
	rlog_begin(&line, event, kind, a);
	if(reason){
		buf_puts(&line, ",\"reason\":");
		json_append_string(&line, reason);
	}
	rlog_end(p, &line, outcome);
}

/* ------------------------------------------------------------------------------------------ */
/* go-auth's "files" backend (backends/files.go, backends/files/files.go): a password file of
 * "username:hash" lines and a Mosquitto-style ACL file, read once at start-up. GetSuperuser is
 * always false; nothing here makes a request. */

#define ACC_NONE 0x00
#define ACC_READ 0x01
#define ACC_WRITE 0x02
#define ACC_READWRITE 0x03
#define ACC_SUBSCRIBE 0x04
#define ACC_DENY 0x11

struct acl_record {
	char *topic;
	int acc;
};

struct acl_list {
	struct acl_record *items;
	size_t len;
	size_t cap;
};

struct file_user {
	char *name;
	char *password; /* the stored hash; "" for a user known only from the ACL file */
	struct acl_list acls;
};

struct files {
	bool check_users;   /* files_password_path given */
	bool check_acls;    /* files_acl_path given */
	bool static_only;   /* files is the only backend: no ACL file then allows everything */
	struct file_user *users;
	size_t nusers;
	struct acl_list general; /* "topic" lines before any "user" line, and every "pattern" */
};

static void acl_list_free(struct acl_list *l)
{
	size_t i;
	for(i = 0; i < l->len; i++) free(l->items[i].topic);
	free(l->items);
	memset(l, 0, sizeof(*l));
}

static bool acl_list_add(struct acl_list *l, const char *topic, int acc)
{
	if(l->len == l->cap){
		size_t cap = l->cap ? l->cap * 2 : 8;
		struct acl_record *items = realloc(l->items, cap * sizeof(*items));
		if(!items) return false;
		l->items = items;
		l->cap = cap;
	}
	l->items[l->len].topic = strdup(topic);
	if(!l->items[l->len].topic) return false;
	l->items[l->len].acc = acc;
	l->len++;
	return true;
}

static void files_free(struct files *f)
{
	size_t i;
	if(!f) return;
	for(i = 0; i < f->nusers; i++){
		free(f->users[i].name);
		free(f->users[i].password);
		acl_list_free(&f->users[i].acls);
	}
	free(f->users);
	acl_list_free(&f->general);
	free(f);
}

static struct file_user *files_user(struct files *f, const char *name)
{
	size_t i;
	for(i = 0; i < f->nusers; i++){
		if(!strcmp(f->users[i].name, name)) return &f->users[i];
	}
	return NULL;
}

static struct file_user *files_add_user(struct files *f, const char *name, const char *password)
{
	struct file_user *users = realloc(f->users, (f->nusers + 1) * sizeof(*users));
	struct file_user *u;
	if(!users) return NULL;
	f->users = users;
	u = &f->users[f->nusers];
	memset(u, 0, sizeof(*u));
	u->name = strdup(name);
	u->password = strdup(password);
	if(!u->name || !u->password){
		free(u->name);
		free(u->password);
		return NULL;
	}
	f->nusers++;
	return u;
}

/* The whole file as one NUL-terminated malloc'd string, or NULL (errno says why). */
static char *read_whole_file(const char *path)
{
	FILE *fp = fopen(path, "rb");
	struct buf b = {0};
	char chunk[4096];
	size_t n;

	if(!fp) return NULL;
	while((n = fread(chunk, 1, sizeof(chunk), fp)) > 0) buf_append(&b, chunk, n);
	fclose(fp);
	if(b.failed){
		buf_free(&b);
		return NULL;
	}
	if(!b.data) buf_append(&b, "", 0);
	return b.data;
}

/* bufio.ScanLines: lines end at \n, one \r before it is dropped; cuts the text in place. */
static char *next_line(char **cursor)
{
	char *line = *cursor, *end;
	size_t len;

	if(!line || !*line) return NULL;
	end = strchr(line, '\n');
	if(end){
		*end = '\0';
		*cursor = end + 1;
	}else{
		*cursor = line + strlen(line);
	}
	len = strlen(line);
	if(len && line[len - 1] == '\r') line[len - 1] = '\0';
	return line;
}

/* checkCommentOrEmpty: nothing but spaces, or a first character '#'. */
static bool comment_or_empty(const char *line)
{
	const char *c;
	if(line[0] == '#') return true;
	for(c = line; *c; c++){
		if(*c != ' ') return false;
	}
	return true;
}

static bool go_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* strings.TrimSpace, in place. */
static char *trim_space(char *s)
{
	char *end;
	while(go_space(*s)) s++;
	end = s + strlen(s);
	while(end > s && go_space(end[-1])) end--;
	*end = '\0';
	return s;
}

/* The first whitespace-separated field (strings.Fields(line)[0]) and how many fields there are
 * (only "1", "2" and "more" matter). */
static int count_fields(const char *line, size_t *first_len)
{
	int count = 0;
	const char *c = line;
	*first_len = 0;
	while(*c){
		while(*c && go_space(*c)) c++;
		if(!*c) break;
		if(count == 0){
			const char *start = c;
			while(*c && !go_space(*c)) c++;
			*first_len = (size_t)(c - start);
		}else{
			while(*c && !go_space(*c)) c++;
		}
		count++;
	}
	return count;
}

static int files_read_passwords(struct files *f, const char *path)
{
	char *text = read_whole_file(path), *cursor = text, *line;
	int index = 0;

	if(!text){
		plog(MOSQ_LOG_ERR, "[StaticFiles] error: couldn't open passwords file: %s: %s", path,
				strerror(errno));
		return MOSQ_ERR_INVAL;
	}
	while((line = next_line(&cursor))){
		char *colon, *password;
		struct file_user *u;
		index++;
		if(comment_or_empty(line)) continue;
		colon = strchr(line, ':');
		if(!colon || strchr(colon + 1, ':')){ /* strings.Split(text, ":") must give 2 parts */
			plog(MOSQ_LOG_ERR, "Read passwords error: line %d is not well formatted", index);
			continue;
		}
		*colon = '\0';
		password = colon + 1;
		u = files_user(f, line);
		if(u){
			char *copy = strdup(password);
			if(!copy){
				free(text);
				return MOSQ_ERR_NOMEM;
			}
			free(u->password);
			u->password = copy;
		}else if(!files_add_user(f, line, password)){
			free(text);
			return MOSQ_ERR_NOMEM;
		}
	}
	free(text);
	return MOSQ_ERR_SUCCESS;
}

static int parse_permission(const char *word)
{
	if(!strcmp(word, "read")) return ACC_READ;
	if(!strcmp(word, "write")) return ACC_WRITE;
	if(!strcmp(word, "readwrite")) return ACC_READWRITE;
	if(!strcmp(word, "subscribe")) return ACC_SUBSCRIBE;
	if(!strcmp(word, "deny")) return ACC_DENY;
	return -1;
}

static int files_read_acls(struct files *f, const char *path)
{
	char *text = read_whole_file(path), *cursor = text, *raw;
	char *current_user = NULL;
	bool user_exists = false, user_seen = false;
	int index = 0, rc = MOSQ_ERR_SUCCESS;

	if(!text){
		plog(MOSQ_LOG_ERR, "StaticFiles backend error: couldn't open acl file: %s: %s", path,
				strerror(errno));
		return MOSQ_ERR_INVAL;
	}
	while((raw = next_line(&cursor))){
		char *line, *rest;
		size_t prefix_len;
		int nfields;

		index++;
		if(comment_or_empty(raw)) continue;
		line = trim_space(raw);
		nfields = count_fields(line, &prefix_len);
		rest = line + prefix_len;
		if(prefix_len == 4 && !strncmp(line, "user", 4)){
			char *username;
			user_seen = true;
			if(strlen(line) - 4 < 1) goto bad_format;
			username = trim_space(rest);
			if(!files_user(f, username)){
				if(f->check_users){
					plog(MOSQ_LOG_WARNING, "user %s doesn't exist, skipping acls", username);
					user_exists = false;
					continue;
				}
				if(!files_add_user(f, username, "")){
					rc = MOSQ_ERR_NOMEM;
					goto out;
				}
			}
			user_exists = true;
			free(current_user);
			current_user = strdup(username);
			if(!current_user){
				rc = MOSQ_ERR_NOMEM;
				goto out;
			}
		}else if((prefix_len == 5 && !strncmp(line, "topic", 5))
				|| (prefix_len == 7 && !strncmp(line, "pattern", 7))){
			bool is_topic = (prefix_len == 5);
			const char *topic;
			int acc;
			char *after;

			if(nfields == 2){
				topic = trim_space(rest);
				acc = ACC_READWRITE;
			}else{
				char *space;
				if(strlen(line) - prefix_len < 1) goto bad_format;
				after = trim_space(rest);
				/* strings.Split(line, " ")[0] is the permission; the topic is what follows */
				space = strchr(after, ' ');
				if(space) *space = '\0';
				acc = parse_permission(after);
				if(acc < 0) goto bad_format;
				if(!space) goto bad_format; /* removeAndTrim: nothing after the permission */
				topic = trim_space(space + 1);
			}
			if(is_topic){
				if(current_user){
					if(!user_exists) continue;
					if(!acl_list_add(&files_user(f, current_user)->acls, topic, acc)){
						rc = MOSQ_ERR_NOMEM;
						goto out;
					}
				}else if(!user_seen){
					if(!acl_list_add(&f->general, topic, acc)){
						rc = MOSQ_ERR_NOMEM;
						goto out;
					}
				}
			}else if(!acl_list_add(&f->general, topic, acc)){
				rc = MOSQ_ERR_NOMEM;
				goto out;
			}
		}else{
			goto bad_format;
		}
		continue;
bad_format:
		plog(MOSQ_LOG_ERR, "StaticFiles backend error: wrong acl format at line %d", index);
		rc = MOSQ_ERR_INVAL;
		goto out;
	}
out:
	free(current_user);
	free(text);
	return rc;
}

/* topics.Match(saved, given): equal, or the saved pattern matches level by level ('+' one
 * level, '#' last and the rest). The given topic's own wildcards are compared literally. */
static bool topic_match(const char *saved, const char *given)
{
	const char *r = saved, *t = given;

	if(!strcmp(saved, given)) return true;
	for(;;){
		const char *rend = strchr(r, '/'), *tend;
		size_t rlen = rend ? (size_t)(rend - r) : strlen(r);

		if(rlen == 1 && r[0] == '#') return rend == NULL;
		if(!t) return false; /* the topic ran out of levels */
		tend = strchr(t, '/');
		if(!(rlen == 1 && r[0] == '+')){
			size_t tlen = tend ? (size_t)(tend - t) : strlen(t);
			if(rlen != tlen || strncmp(r, t, rlen) != 0) return false;
		}
		if(!rend){
			return tend == NULL;
		}
		r = rend + 1;
		t = tend ? tend + 1 : NULL;
		if(!t){
			/* match(route, []) is route[0] == "#", whatever follows it */
			return r[0] == '#' && (r[1] == '\0' || r[1] == '/');
		}
	}
}

/* strings.Replace(topic, "%c", clientid, -1) then "%u" with the username. */
static bool expand_pattern(struct buf *out, const char *topic, const char *clientid,
		const char *username)
{
	struct buf mid = {0};
	const char *p;

	for(p = topic; *p; p++){
		if(p[0] == '%' && p[1] == 'c'){
			buf_puts(&mid, clientid);
			p++;
		}else{
			buf_putc(&mid, *p);
		}
	}
	if(!mid.data) buf_append(&mid, "", 0);
	for(p = mid.data ? mid.data : ""; *p; p++){
		if(p[0] == '%' && p[1] == 'u'){
			buf_puts(out, username);
			p++;
		}else{
			buf_putc(out, *p);
		}
	}
	if(!out->data) buf_append(out, "", 0);
	buf_free(&mid);
	return !out->failed;
}

static bool grants(int record_acc, int acc, const char *topic)
{
	return acc == record_acc || record_acc == ACC_READWRITE
		|| (acc == ACC_SUBSCRIBE && strcmp(topic, "#") != 0
				&& (record_acc == ACC_READ || record_acc == ACC_SUBSCRIBE));
}

/* Checker.CheckAcl: denials first (the user's, then the general ones), then grants. */
static enum outcome files_check_acl(struct files *f, const struct check_args *a)
{
	struct file_user *u;
	size_t i;
	int pass;

	if(!f->check_acls) return f->static_only ? OUTCOME_ALLOW : OUTCOME_DENY;
	u = files_user(f, a->username);
	for(pass = 0; pass < 2; pass++){
		bool deny_pass = (pass == 0);
		if(u){
			for(i = 0; i < u->acls.len; i++){
				const struct acl_record *r = &u->acls.items[i];
				if(!topic_match(r->topic, a->topic)) continue;
				if(deny_pass && r->acc == ACC_DENY) return OUTCOME_DENY;
				if(!deny_pass && grants(r->acc, a->acc, a->topic)) return OUTCOME_ALLOW;
			}
		}
		for(i = 0; i < f->general.len; i++){
			const struct acl_record *r = &f->general.items[i];
			struct buf expanded = {0};
			bool match;
			if(!expand_pattern(&expanded, r->topic, a->clientid, a->username)){
				buf_free(&expanded);
				return OUTCOME_ERROR;
			}
			match = topic_match(expanded.data, a->topic);
			buf_free(&expanded);
			if(!match) continue;
			if(deny_pass && r->acc == ACC_DENY) return OUTCOME_DENY;
			if(!deny_pass && grants(r->acc, a->acc, a->topic)) return OUTCOME_ALLOW;
		}
	}
	return OUTCOME_DENY;
}

/* base64.StdEncoding.DecodeString: padded, no whitespace. Returns the length or -1. */
static long base64_decode(const char *in, unsigned char *out, size_t cap)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t len = strlen(in), i, n = 0;
	if(len % 4) return -1;
	for(i = 0; i < len; i += 4){
		int v[4], k;
		for(k = 0; k < 4; k++){
			const char *pos;
			char ch = in[i + (size_t)k];
			if(ch == '=' && i + 4 == len && k >= 2){
				v[k] = -1;
				continue;
			}
			if(ch == '\0' || !(pos = strchr(alphabet, ch))) return -1;
			v[k] = (int)(pos - alphabet);
		}
		if(v[2] < 0 && v[3] >= 0) return -1;
		if(n + 3 > cap) return -1;
		out[n++] = (unsigned char)((v[0] << 2) | (v[1] >> 4));
		if(v[2] >= 0) out[n++] = (unsigned char)(((v[1] & 0xF) << 4) | (v[2] >> 2));
		if(v[3] >= 0) out[n++] = (unsigned char)(((v[2] & 0x3) << 6) | v[3]);
	}
	return (long)n;
}

/* pbkdf2Hasher.Compare for go-auth's own "PBKDF2$<sha512|sha256>$<iterations>$<salt>$<hash>"
 * (what its pw tool writes; the key length is the stored hash's). Other formats: no match. */
static bool pbkdf2_compare(const struct plugin *p, const char *password, const char *stored)
{
	char *copy = strdup(stored), *fields[6], *save = NULL, *tok;
	int nfields = 0;
	unsigned char salt[512], want[512], got[512];
	long saltlen, wantlen;
	long long iterations;
	bool ok = false;

	if(!copy) return false;
	/* strings.FieldsFunc on '$': empty fields are skipped */
	for(tok = strtok_r(copy, "$", &save); tok && nfields < 6; tok = strtok_r(NULL, "$", &save)){
		fields[nfields++] = tok;
	}
	if(nfields < 5 || strcmp(fields[0], "PBKDF2") != 0) goto out;
	if(!parse_go_int(fields[2], &iterations) || iterations < 1 || iterations > INT_MAX) goto out;
	if(p->salt_utf8){
		saltlen = (long)strlen(fields[3]);
		if(saltlen > (long)sizeof(salt)) goto out;
		memcpy(salt, fields[3], (size_t)saltlen);
	}else if((saltlen = base64_decode(fields[3], salt, sizeof(salt))) < 0){
		goto out;
	}
	if((wantlen = base64_decode(fields[4], want, sizeof(want))) <= 0) goto out;
	if(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)saltlen, (int)iterations,
				strcmp(fields[1], "sha256") ? EVP_sha512() : EVP_sha256(), (int)wantlen, got) != 1){
		goto out;
	}
	ok = memcmp(want, got, (size_t)wantlen) == 0;
out:
	free(copy);
	return ok;
}

static enum outcome files_get_user(struct plugin *p, const struct check_args *a)
{
	struct file_user *u = files_user(p->files, a->username);
	if(!u) return OUTCOME_DENY;
	if(pbkdf2_compare(p, a->password, u->password)) return OUTCOME_ALLOW;
	plog(MOSQ_LOG_WARNING, "wrong password for user %s", a->username);
	return OUTCOME_DENY;
}

static int files_load(struct plugin *p)
{
	struct files *f = calloc(1, sizeof(*f));
	int rc;
	if(!f) return MOSQ_ERR_NOMEM;
	p->files = f;
	f->check_users = p->files_password_path && p->files_password_path[0];
	f->check_acls = p->files_acl_path && p->files_acl_path[0];
	f->static_only = (p->nbackends == 1);
	if(!f->check_users) plog(MOSQ_LOG_INFO, "[StaticFiles] passwords won't be checked");
	if(!f->check_acls) plog(MOSQ_LOG_INFO, "[StaticFiles] acls won't be checked");
	if(f->check_users && (rc = files_read_passwords(f, p->files_password_path))) return rc;
	if(f->check_acls && (rc = files_read_acls(f, p->files_acl_path))) return rc;
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* One HTTP check (go-auth backends/http.go httpRequest). */

struct response {
	struct buf body;
	bool keep;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct response *r = userdata;
	size_t n = size * nmemb;

	if(!r->keep) return n;
	if(r->body.len + n > MAX_RESPONSE_BODY) return 0; /* aborts the transfer: an error */
	buf_append(&r->body, data, n);
	return r->body.failed ? 0 : n;
}

static void build_body(const struct plugin *p, enum check_kind kind, const struct check_args *a,
		struct buf *body)
{
	/* Go marshals a map (JSON) and encodes url.Values (form) with the keys sorted. */
	if(p->params_mode == PARAMS_JSON){
		switch(kind){
			case CHECK_USER:
				buf_puts(body, "{\"clientid\":");
				json_append_string(body, a->clientid);
				buf_puts(body, ",\"password\":");
				json_append_string(body, a->password);
				buf_puts(body, ",\"username\":");
				json_append_string(body, a->username);
				buf_putc(body, '}');
				break;
			case CHECK_SUPERUSER:
				buf_puts(body, "{\"username\":");
				json_append_string(body, a->username);
				buf_putc(body, '}');
				break;
			case CHECK_ACL:
				/* acc is an int32 in go-auth, so a JSON number */
				buf_printf(body, "{\"acc\":%d,\"clientid\":", a->acc);
				json_append_string(body, a->clientid);
				buf_puts(body, ",\"topic\":");
				json_append_string(body, a->topic);
				buf_puts(body, ",\"username\":");
				json_append_string(body, a->username);
				buf_putc(body, '}');
				break;
		}
	}else{
		switch(kind){
			case CHECK_USER:
				buf_puts(body, "clientid=");
				form_append_escaped(body, a->clientid);
				buf_puts(body, "&password=");
				form_append_escaped(body, a->password);
				buf_puts(body, "&username=");
				form_append_escaped(body, a->username);
				break;
			case CHECK_SUPERUSER:
				buf_puts(body, "username=");
				form_append_escaped(body, a->username);
				break;
			case CHECK_ACL:
				buf_printf(body, "acc=%d&clientid=", a->acc);
				form_append_escaped(body, a->clientid);
				buf_puts(body, "&topic=");
				form_append_escaped(body, a->topic);
				buf_puts(body, "&username=");
				form_append_escaped(body, a->username);
				break;
		}
	}
}

static enum outcome http_check(struct plugin *p, enum check_kind kind, const struct check_args *a)
{
	const char *uri = (kind == CHECK_USER) ? p->user_uri
		: (kind == CHECK_SUPERUSER) ? p->superuser_uri : p->acl_uri;
	bool form = (p->params_mode == PARAMS_FORM);
	/* Form mode goes through http.Client.PostForm: always POST, whatever http_method says,
	 * except that go-auth refuses GET with an error before sending anything. */
	enum http_method method = form ? METHOD_POST : p->method;
	struct buf url = {0}, safe_url = {0}, body = {0}, line = {0};
	struct response resp = {{0}, p->response_mode != RESPONSE_STATUS};
	enum outcome outcome = OUTCOME_ERROR;
	CURLcode rc;
	long status = 0;
	int64_t started;
	double elapsed_ms;

	buf_puts(&url, "http://");
	buf_puts(&url, p->host);
	if(p->port[0]){ /* go-auth leaves the port out when http_port is empty */
		buf_putc(&url, ':');
		buf_puts(&url, p->port);
	}
	buf_puts(&url, uri);
	redact_secret(&safe_url, url.failed ? "" : url.data);

	if(form && p->method == METHOD_GET){
		plog(MOSQ_LOG_ERR, "error form param only supported for POST/PUT: %s", safe_url.data);
		rlog_simple(p, "no_request", kind, a, "form params with http_method GET", OUTCOME_ERROR);
		goto done;
	}

	build_body(p, kind, a, &body);
	if(url.failed || body.failed || safe_url.failed){
		plog(MOSQ_LOG_ERR, "out of memory building a %s request", check_names[kind]);
		goto done;
	}

	curl_easy_reset(p->curl); /* keeps the connection cache: connections are reused, as Go does */
	p->curl_error[0] = '\0';
	curl_easy_setopt(p->curl, CURLOPT_ERRORBUFFER, p->curl_error);
	curl_easy_setopt(p->curl, CURLOPT_URL, url.data);
	curl_easy_setopt(p->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(p->curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	/* go-auth's http.Client.Timeout covers the whole exchange (connect, send, read the body);
	 * so does CURLOPT_TIMEOUT. <= 0 means none, as in Go. */
	if(p->timeout_s > 0){
		long long ms = p->timeout_s > LONG_MAX / 1000 ? LONG_MAX : p->timeout_s * 1000;
		curl_easy_setopt(p->curl, CURLOPT_TIMEOUT_MS, (long)ms);
	}
	/* Go's client follows up to 10 redirects, turning POST into a body-less GET on 301/302/303
	 * and repeating it on 307/308: curl's rules for POST are the same. */
	curl_easy_setopt(p->curl, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(p->curl, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(p->curl, CURLOPT_PROTOCOLS_STR, "http");
	curl_easy_setopt(p->curl, CURLOPT_REDIR_PROTOCOLS_STR, "http");
#endif
	/* go-auth (http_verify_peer false, its default) builds a bare http.Transport, which uses no
	 * proxy: ignore http_proxy & co. from the environment too. */
	curl_easy_setopt(p->curl, CURLOPT_PROXY, "");
	/* Go asks for gzip and decodes it transparently. */
	curl_easy_setopt(p->curl, CURLOPT_ACCEPT_ENCODING, "gzip");
	curl_easy_setopt(p->curl, CURLOPT_HTTPHEADER, form ? p->form_headers : p->json_headers);
	curl_easy_setopt(p->curl, CURLOPT_USERAGENT, form ? GO_FORM_USER_AGENT : p->user_agent);
	curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, body.data);
	curl_easy_setopt(p->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body.len);
	if(method != METHOD_POST){
		/* go-auth sends the JSON body with GET and PUT too. */
		curl_easy_setopt(p->curl, CURLOPT_CUSTOMREQUEST, method_names[method]);
	}
	curl_easy_setopt(p->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, &resp);

	started = monotonic_ns();
	rc = curl_easy_perform(p->curl);
	elapsed_ms = (double)(monotonic_ns() - started) / 1e6;

	if(rc != CURLE_OK){
		/* Transport failure: refused, timeout, reset, bad gzip... go-auth: (false, err). */
		const char *why = p->curl_error[0] ? p->curl_error : curl_easy_strerror(rc);
		plog(MOSQ_LOG_ERR, "http request error: %s %s: %s", method_names[method], safe_url.data, why);
		outcome = OUTCOME_ERROR;
	}else{
		curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &status);
		if(status < 200 || status >= 300){
			plog(status >= 500 ? MOSQ_LOG_ERR : MOSQ_LOG_INFO, "error code: %ld from %s %s",
					status, method_names[method], safe_url.data);
			outcome = status >= 500 ? OUTCOME_ERROR : OUTCOME_DENY;
		}else if(p->response_mode == RESPONSE_TEXT){
			/* exactly "ok": case-sensitive, no trailing newline */
			outcome = (resp.body.len == 2 && memcmp(resp.body.data, "ok", 2) == 0)
				? OUTCOME_ALLOW : OUTCOME_DENY;
		}else if(p->response_mode == RESPONSE_JSON){
			outcome = json_response_outcome(resp.body.data ? resp.body.data : "", resp.body.len);
			if(outcome == OUTCOME_ERROR){
				plog(MOSQ_LOG_ERR, "unmarshal error: not go-auth's JSON response from %s",
						safe_url.data);
			}
		}else{
			outcome = OUTCOME_ALLOW;
		}
		plog(MOSQ_LOG_DEBUG, "%s check: %ld %s from %s %s", check_names[kind], status,
				outcome_names[outcome], method_names[method], safe_url.data);
	}

	if(p->log){
		rlog_begin(&line, "request", kind, a);
		buf_puts(&line, ",\"method\":");
		json_append_string(&line, method_names[method]);
		buf_puts(&line, ",\"url\":");
		json_append_string(&line, safe_url.data);
		buf_puts(&line, ",\"content_type\":");
		json_append_string(&line, form ? "application/x-www-form-urlencoded" : "application/json");
		buf_puts(&line, ",\"user_agent\":");
		json_append_string(&line, form ? GO_FORM_USER_AGENT : p->user_agent);
		if(rc == CURLE_OK){
			buf_printf(&line, ",\"status\":%ld", status);
		}else{
			buf_puts(&line, ",\"status\":null,\"error\":");
			json_append_string(&line, p->curl_error[0] ? p->curl_error : curl_easy_strerror(rc));
		}
		buf_printf(&line, ",\"elapsed_ms\":%.3f", elapsed_ms);
		rlog_end(p, &line, outcome);
	}

done:
	buf_free(&url);
	buf_free(&safe_url);
	buf_free(&body);
	buf_free(&resp.body);
	return outcome;
}

/* ------------------------------------------------------------------------------------------ */
/* The checks, as go-auth.go and backends/backends.go compose them. */

static void make_key(struct buf *key, const struct check_args *a, enum check_kind kind)
{
	if(kind == CHECK_USER){
		buf_printf(key, "auth-%s-%s", a->username, a->password);
	}else{
		buf_printf(key, "acl-%s-%s-%s-%d", a->username, a->topic, a->clientid, a->acc);
	}
}

/* Backends.checkAuth: each user checker in order; the first allow wins; otherwise the first
 * error (if any) is the answer, else a deny. */
static enum outcome backends_user(struct plugin *p, const struct check_args *a)
{
	bool failed = false;
	int i;

	for(i = 0; i < p->nbackends; i++){
		enum outcome r;
		if(!p->user_checker[i]) continue;
		if(p->backends[i] == BACKEND_FILES){
			r = files_get_user(p, a);
			rlog_simple(p, "files", CHECK_USER, a, NULL, r);
		}else{
			r = http_check(p, CHECK_USER, a);
		}
		if(r == OUTCOME_ALLOW) return OUTCOME_ALLOW;
		if(r == OUTCOME_ERROR) failed = true;
	}
	return failed ? OUTCOME_ERROR : OUTCOME_DENY;
}

/* authUnpwdCheck: cache, then the backends; only real answers (not errors) are cached. */
static enum outcome user_check_once(struct plugin *p, const struct check_args *a)
{
	struct buf key = {0};
	bool granted;
	enum outcome r;

	if(p->use_cache){
		make_key(&key, a, CHECK_USER);
		if(!key.failed && cache_get(&p->cache, &key, &granted)){
			r = granted ? OUTCOME_ALLOW : OUTCOME_DENY;
			rlog_simple(p, "cache_hit", CHECK_USER, a, NULL, r);
			buf_free(&key);
			return r;
		}
	}
	r = backends_user(p, a);
	if(p->use_cache && r != OUTCOME_ERROR && !key.failed){
		cache_set(&p->cache, &key, r == OUTCOME_ALLOW,
				ttl_with_jitter_ns(p->auth_ttl_s, p->auth_jitter_s));
	}
	buf_free(&key);
	return r;
}

/* Backends.checkSuperuserThenACL: every superuser checker first (a 2xx from one grants
 * everything without asking for the ACL); then every ACL checker in order, the first allow
 * winning. An error is remembered and returned unless something allows. The files backend is
 * never a superuser (it answers false without a request), nor is http without a superuser uri
 * (GetSuperuser with an empty uri answers false without a request). */
static enum outcome superuser_then_acl(struct plugin *p, const struct check_args *a)
{
	bool failed = false;
	enum outcome r;
	int i;

	if(!p->disable_superuser){
		for(i = 0; i < p->nbackends; i++){
			if(!p->superuser_checker[i] || p->backends[i] != BACKEND_HTTP) continue;
			if(!p->superuser_uri || !p->superuser_uri[0]) continue;
			r = http_check(p, CHECK_SUPERUSER, a);
			if(r == OUTCOME_ALLOW) return OUTCOME_ALLOW;
			if(r == OUTCOME_ERROR) failed = true;
		}
	}
	for(i = 0; i < p->nbackends; i++){
		if(!p->acl_checker[i]) continue;
		if(p->backends[i] == BACKEND_FILES){
			r = files_check_acl(p->files, a);
			rlog_simple(p, "files", CHECK_ACL, a, NULL, r);
		}else{
			r = http_check(p, CHECK_ACL, a);
		}
		if(r == OUTCOME_ALLOW) return OUTCOME_ALLOW;
		if(r == OUTCOME_ERROR) failed = true;
	}
	return failed ? OUTCOME_ERROR : OUTCOME_DENY;
}

/* authAclCheck: the cache sits in front of the whole superuser-then-acl decision, so with the
 * cache on a superuser answer is cached too, but only as part of the ACL record of that
 * (username, topic, clientid, acc); there is no separate superuser record in go-auth 3.0.0. */
static enum outcome acl_check_once(struct plugin *p, const struct check_args *a)
{
	struct buf key = {0};
	bool granted;
	enum outcome r;

	if(p->use_cache){
		make_key(&key, a, CHECK_ACL);
		if(!key.failed && cache_get(&p->cache, &key, &granted)){
			r = granted ? OUTCOME_ALLOW : OUTCOME_DENY;
			rlog_simple(p, "cache_hit", CHECK_ACL, a, NULL, r);
			buf_free(&key);
			return r;
		}
	}
	r = superuser_then_acl(p, a);
	if(p->use_cache && r != OUTCOME_ERROR && !key.failed){
		cache_set(&p->cache, &key, r == OUTCOME_ALLOW,
				ttl_with_jitter_ns(p->acl_ttl_s, p->acl_jitter_s));
	}
	buf_free(&key);
	return r;
}

/* go-auth retries a whole check (cache lookup included) right away after an error, up to
 * retry_count more times. Like go-auth's loop, a negative retry_count runs no attempt at all,
 * which answers "deny". */
static enum outcome with_retries(struct plugin *p, enum check_kind kind, const struct check_args *a)
{
	enum outcome r = OUTCOME_DENY;
	long long attempt;

	for(attempt = 0; attempt <= p->retry_count; attempt++){
		r = (kind == CHECK_USER) ? user_check_once(p, a) : acl_check_once(p, a);
		if(r != OUTCOME_ERROR) break;
	}
	if(r == OUTCOME_ERROR){
		plog(MOSQ_LOG_ERR, "%s check failed for user \"%s\": backend error", check_names[kind],
				a->username);
	}
	rlog_simple(p, "result", kind, a, NULL, r);
	return r;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct plugin *p = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct check_args a = {0};
	const char *clientid;

	(void)event;
	clientid = mosquitto_client_id(ed->client);
	a.username = ed->username;
	a.password = ed->password;
	a.clientid = clientid ? clientid : ""; /* C.GoString(NULL) is "" */

	/* auth-plugin.c: a missing username or password is rejected before Go is asked. */
	if(!ed->username || !ed->password){
		plog(MOSQ_LOG_NOTICE, "received null username or password for unpwd check (client \"%s\")",
				a.clientid);
		rlog_simple(p, "no_request", CHECK_USER, &a, "null username or password", OUTCOME_DENY);
		return MOSQ_ERR_AUTH;
	}
	if(p->use_clientid_as_username) a.username = a.clientid;

	switch(with_retries(p, CHECK_USER, &a)){
		case OUTCOME_ALLOW: return MOSQ_ERR_SUCCESS;
		case OUTCOME_DENY: return MOSQ_ERR_AUTH;
		default: return MOSQ_ERR_UNKNOWN; /* CONNECT: socket closed, no CONNACK */
	}
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct plugin *p = userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	struct check_args a = {0};

	(void)event;
	a.username = mosquitto_client_username(ed->client);
	a.clientid = mosquitto_client_id(ed->client);
	a.topic = ed->topic;
	a.acc = ed->access;

	/* mosquitto's acl__check_single for v4 plugins: a username or client id with + or # is
	 * denied before the plugin is called (auth_plugin_deny_special_chars, default true). */
	if(p->deny_special_chars){
		if(a.username && strpbrk(a.username, "+#")){
			plog(MOSQ_LOG_NOTICE, "ACL denying access to client with dangerous username \"%s\"",
					a.username);
			rlog_simple(p, "no_request", CHECK_ACL, &a, "dangerous username", OUTCOME_DENY);
			return MOSQ_ERR_ACL_DENIED;
		}
		if(a.clientid && strpbrk(a.clientid, "+#")){
			plog(MOSQ_LOG_NOTICE, "ACL denying access to client with dangerous client id \"%s\"",
					a.clientid);
			rlog_simple(p, "no_request", CHECK_ACL, &a, "dangerous client id", OUTCOME_DENY);
			return MOSQ_ERR_ACL_DENIED;
		}
	}
	/* ...and answers UNSUBSCRIBE itself (allow) for v4 plugins, which go-auth is. mosquitto 2.0.11
	 * does pass acc 8 to v5 callbacks (handle_unsubscribe.c), so this is where it is absorbed. */
	if(a.acc == MOSQ_ACL_UNSUBSCRIBE){
		rlog_simple(p, "no_request", CHECK_ACL, &a, "unsubscribe", OUTCOME_ALLOW);
		return MOSQ_ERR_SUCCESS;
	}
	/* auth-plugin.c: NULL username, clientid or topic, or access < 1: denied, Go is not asked. */
	if(!a.username || !a.clientid || !a.topic || a.acc < 1){
		plog(MOSQ_LOG_NOTICE, "received null username, clientid or topic, or access <= 0 for acl check");
		rlog_simple(p, "no_request", CHECK_ACL, &a, "null username, clientid or topic", OUTCOME_DENY);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(p->use_clientid_as_username) a.username = a.clientid;

	switch(with_retries(p, CHECK_ACL, &a)){
		case OUTCOME_ALLOW: return MOSQ_ERR_SUCCESS;
		case OUTCOME_DENY: return MOSQ_ERR_ACL_DENIED;
		/* SUBSCRIBE/PUBLISH: the client is disconnected; delivery: not delivered; will: dropped */
		default: return MOSQ_ERR_UNKNOWN;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Plugin entry points. */

static void plugin_free(struct plugin *p)
{
	if(!p) return;
	if(p->curl) curl_easy_cleanup(p->curl);
	curl_slist_free_all(p->json_headers);
	curl_slist_free_all(p->form_headers);
	if(p->curl_global) curl_global_cleanup();
	if(p->log) fclose(p->log);
	cache_free(&p->cache);
	free(p->host);
	free(p->port);
	free(p->user_uri);
	free(p->superuser_uri);
	free(p->acl_uri);
	free(p->user_agent);
	free(p->log_path);
	free(p->backends_opt);
	free(p->files_register);
	free(p->http_register);
	free(p->files_password_path);
	free(p->files_acl_path);
	files_free(p->files);
	free(p);
}

static bool set_string(char **field, const char *value)
{
	char *copy = strdup(value);
	if(!copy) return false;
	free(*field);
	*field = copy;
	return true;
}

static void parse_int_option(const char *key, const char *value, long long *field)
{
	long long v;
	if(parse_go_int(value, &v)){
		*field = v;
	}else{
		plog(MOSQ_LOG_WARNING, "couldn't parse %s \"%s\", defaulting to %lld", key, value, *field);
	}
}

/* Backends.Initialize + setCheckers: auth_opt_backends (spaces removed, comma separated, each a
 * known backend) and, per backend, <prefix>_register (user, acl, superuser; all three when the
 * option is absent; superuser never with disable_superuser). Without auth_opt_backends (which
 * go-auth requires) this plugin is the http backend alone, as before it knew of backends. */
static bool parse_register(const char *opt, bool *user, bool *acl, bool *superuser)
{
	char list[128];
	char *save = NULL, *tok;
	size_t n = 0;
	const char *c;

	for(c = opt; *c && n < sizeof(list) - 1; c++){
		if(*c != ' ') list[n++] = *c;
	}
	list[n] = '\0';
	*user = *acl = *superuser = false;
	for(tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)){
		if(!strcmp(tok, "user")) *user = true;
		else if(!strcmp(tok, "acl")) *acl = true;
		else if(!strcmp(tok, "superuser")) *superuser = true;
		else{
			plog(MOSQ_LOG_ERR, "unsupported check %s found in a _register option", tok);
			return false;
		}
	}
	return true;
}

static int setup_backends(struct plugin *p)
{
	char list[256];
	char *save = NULL, *tok;
	size_t n = 0;
	const char *c, *spec = p->backends_opt ? p->backends_opt : "http";
	int i;

	for(c = spec; *c && n < sizeof(list) - 1; c++){
		if(*c != ' ') list[n++] = *c;
	}
	list[n] = '\0';
	if(!list[0]){
		plog(MOSQ_LOG_ERR, "error initializing backends: missing or blank option backends");
		return MOSQ_ERR_INVAL;
	}
	for(tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)){
		const char *reg;
		bool user = true, acl = true, superuser = true;
		if(p->nbackends == MAX_BACKENDS){
			plog(MOSQ_LOG_ERR, "too many backends");
			return MOSQ_ERR_INVAL;
		}
		if(!strcmp(tok, "files")){
			p->backends[p->nbackends] = BACKEND_FILES;
			reg = p->files_register;
		}else if(!strcmp(tok, "http")){
			p->backends[p->nbackends] = BACKEND_HTTP;
			reg = p->http_register;
			p->has_http = true;
		}else{
			plog(MOSQ_LOG_ERR, "error initializing backends: backend %s is not supported by this"
					" test plugin (files and http are)", tok);
			return MOSQ_ERR_INVAL;
		}
		if(reg && !parse_register(reg, &user, &acl, &superuser)) return MOSQ_ERR_INVAL;
		p->user_checker[p->nbackends] = user;
		p->acl_checker[p->nbackends] = acl;
		p->superuser_checker[p->nbackends] = superuser && !p->disable_superuser;
		p->nbackends++;
	}
	for(i = 0; i < p->nbackends; i++){
		if(p->user_checker[i] || p->acl_checker[i]) break;
	}
	if(i == p->nbackends){
		plog(MOSQ_LOG_ERR, "error initializing backends: no backends registered");
		return MOSQ_ERR_INVAL;
	}
	for(i = 0; i < p->nbackends; i++){
		if(p->backends[i] == BACKEND_FILES){
			/* go-auth (NewFiles): files_register naming "user" needs the password file */
			if(p->files_register && strstr(p->files_register, "user")
					&& !(p->files_password_path && p->files_password_path[0])){
				plog(MOSQ_LOG_ERR, "error initializing backends: missing passwords file path");
				return MOSQ_ERR_INVAL;
			}
			return files_load(p);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int parse_options(struct plugin *p, struct mosquitto_opt *opts, int count)
{
	const char *missing[4];
	int nmissing = 0;
	int i, rc;
	bool ok = true;
	char ua[64];

	p->params_mode = PARAMS_JSON;
	p->response_mode = RESPONSE_STATUS;
	p->method = METHOD_POST;
	p->timeout_s = 5;
	p->auth_ttl_s = 30;
	p->acl_ttl_s = 30;
	p->deny_special_chars = true;
	snprintf(ua, sizeof(ua), "mosquitto-%s", GOAUTH_MOSQUITTO_VERSION);
	ok = set_string(&p->user_agent, ua);

	for(i = 0; i < count && ok; i++){
		const char *k = opts[i].key, *v = opts[i].value ? opts[i].value : "";
		if(!k) continue;
		if(!strcmp(k, "http_host")) ok = set_string(&p->host, v);
		else if(!strcmp(k, "http_port")) ok = set_string(&p->port, v);
		else if(!strcmp(k, "http_getuser_uri")) ok = set_string(&p->user_uri, v);
		else if(!strcmp(k, "http_superuser_uri")) ok = set_string(&p->superuser_uri, v);
		else if(!strcmp(k, "http_aclcheck_uri")) ok = set_string(&p->acl_uri, v);
		else if(!strcmp(k, "http_user_agent")) ok = set_string(&p->user_agent, v);
		else if(!strcmp(k, "log_file")) ok = set_string(&p->log_path, v);
		else if(!strcmp(k, "backends")) ok = set_string(&p->backends_opt, v);
		else if(!strcmp(k, "files_register")) ok = set_string(&p->files_register, v);
		else if(!strcmp(k, "http_register")) ok = set_string(&p->http_register, v);
		else if(!strcmp(k, "files_password_path")) ok = set_string(&p->files_password_path, v);
		else if(!strcmp(k, "files_acl_path")) ok = set_string(&p->files_acl_path, v);
		else if(!strcmp(k, "auth_jitter_seconds")) parse_int_option(k, v, &p->auth_jitter_s);
		else if(!strcmp(k, "acl_jitter_seconds")) parse_int_option(k, v, &p->acl_jitter_s);
		else if(!strcmp(k, "hasher_salt_encoding")) p->salt_utf8 = !strcmp(v, "utf-8");
		else if((!strcmp(k, "hasher") || !strcmp(k, "files_hasher")) && v[0] && strcmp(v, "pbkdf2")){
			plog(MOSQ_LOG_ERR, "hasher %s is not supported by this test plugin (pbkdf2 only)", v);
			return MOSQ_ERR_INVAL;
		}else if(!strcmp(k, "exhaust_backend_first") && !strcmp(v, "true")){
			plog(MOSQ_LOG_ERR, "exhaust_backend_first is not supported by this test plugin");
			return MOSQ_ERR_INVAL;
		}else if(!strcmp(k, "check_prefix") && !strcmp(v, "true")){
			plog(MOSQ_LOG_ERR, "check_prefix is not supported by this test plugin");
			return MOSQ_ERR_INVAL;
		}
		else if(!strcmp(k, "http_params_mode")){
			/* go-auth: only "form" changes the default; anything else stays json */
			p->params_mode = !strcmp(v, "form") ? PARAMS_FORM : PARAMS_JSON;
		}else if(!strcmp(k, "http_response_mode")){
			if(!strcmp(v, "text")) p->response_mode = RESPONSE_TEXT;
			else if(!strcmp(v, "json")) p->response_mode = RESPONSE_JSON;
			else p->response_mode = RESPONSE_STATUS;
		}else if(!strcmp(k, "http_method")){
			p->method = !strcmp(v, "GET") ? METHOD_GET : !strcmp(v, "PUT") ? METHOD_PUT : METHOD_POST;
		}else if(!strcmp(k, "http_timeout")) parse_int_option(k, v, &p->timeout_s);
		else if(!strcmp(k, "auth_cache_seconds")) parse_int_option(k, v, &p->auth_ttl_s);
		else if(!strcmp(k, "acl_cache_seconds")) parse_int_option(k, v, &p->acl_ttl_s);
		else if(!strcmp(k, "retry_count")) parse_int_option(k, v, &p->retry_count);
		else if(!strcmp(k, "cache")) p->use_cache = is_true_ignoring_spaces(v);
		else if(!strcmp(k, "use_clientid_as_username")) p->use_clientid_as_username = is_true_ignoring_spaces(v);
		else if(!strcmp(k, "disable_superuser")) p->disable_superuser = !strcmp(v, "true");
		else if(!strcmp(k, "deny_special_chars")) p->deny_special_chars = strcmp(v, "false") != 0;
		else if(!strcmp(k, "http_with_tls") && !strcmp(v, "true")){
			plog(MOSQ_LOG_ERR, "http_with_tls is not supported by this test plugin");
			return MOSQ_ERR_INVAL;
		}else if(!strcmp(k, "cache_refresh") && !strcmp(v, "true")){
			plog(MOSQ_LOG_WARNING, "cache_refresh is not supported and ignored");
		}else if(!strcmp(k, "cache_type") && strcmp(v, "go-cache")){
			plog(MOSQ_LOG_WARNING, "cache_type %s is not supported: using the in-memory cache", v);
		}
		/* other go-auth options (log_level, cache_reset, ...) change nothing here */
	}
	if(!ok) return MOSQ_ERR_NOMEM;
	rc = setup_backends(p);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	if(!p->has_http) return MOSQ_ERR_SUCCESS; /* the HTTP options below are http's own */

	/* go-auth's required HTTP options (a missing one is fatal there too). */
	if(!p->user_uri) missing[nmissing++] = "http_getuser_uri";
	if(!p->acl_uri) missing[nmissing++] = "http_aclcheck_uri";
	if(!p->host) missing[nmissing++] = "http_host";
	if(!p->port) missing[nmissing++] = "http_port";
	if(nmissing){
		for(i = 0; i < nmissing; i++){
			plog(MOSQ_LOG_ERR, "HTTP backend error: missing remote option plugin_opt_%s", missing[i]);
		}
		return MOSQ_ERR_INVAL;
	}
	return MOSQ_ERR_SUCCESS;
}

/* The request headers besides Host, Content-Length, User-Agent and Accept-Encoding. "Accept:" and
 * "Expect:" remove curl's own: Go sends neither (and "Expect: 100-continue" would stall large
 * bodies, e.g. long topics, for a second). */
static struct curl_slist *make_headers(const char *content_type)
{
	const char *lines[] = {content_type, "Accept:", "Expect:"};
	struct curl_slist *list = NULL, *next;
	size_t i;

	for(i = 0; i < sizeof(lines) / sizeof(lines[0]); i++){
		next = curl_slist_append(list, lines[i]);
		if(!next){
			curl_slist_free_all(list);
			return NULL;
		}
		list = next;
	}
	return list;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	struct plugin *p;
	int rc;
	p = calloc(1, sizeof(*p));
	if(!p) return MOSQ_ERR_NOMEM;
	p->identifier = identifier;

	rc = parse_options(p, opts, opt_count);
	if(rc != MOSQ_ERR_SUCCESS){
		plugin_free(p);
		return rc;
	}

	if(p->log_path && p->log_path[0]){
		p->log = fopen(p->log_path, "a");
		if(!p->log){
			plog(MOSQ_LOG_ERR, "cannot open log_file %s: %s", p->log_path, strerror(errno));
			plugin_free(p);
			return MOSQ_ERR_INVAL;
		}
	}

	if(curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK){
		plog(MOSQ_LOG_ERR, "cannot initialise libcurl");
		plugin_free(p);
		return MOSQ_ERR_UNKNOWN;
	}
	p->curl_global = true;
	srandom((unsigned)(monotonic_ns() ^ (int64_t)getpid())); /* the cache jitter */
	/* One easy handle for every request: mosquitto calls plugins from its single thread. */
	p->curl = curl_easy_init();
	if(!p->curl){
		plog(MOSQ_LOG_ERR, "cannot initialise libcurl");
		plugin_free(p);
		return MOSQ_ERR_UNKNOWN;
	}
	p->json_headers = make_headers("Content-Type: application/json");
	p->form_headers = make_headers("Content-Type: application/x-www-form-urlencoded");
	if(!p->json_headers || !p->form_headers){
		plugin_free(p);
		return MOSQ_ERR_NOMEM;
	}

	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, p);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, p);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		}
	}
	if(rc != MOSQ_ERR_SUCCESS){
		plog(MOSQ_LOG_ERR, "cannot register callbacks (%d)", rc);
		plugin_free(p);
		return rc;
	}

	/* URLs go last or before a space: redaction runs up to the next space, & or #. */
	plog(MOSQ_LOG_INFO, "backends %s; cache %s (auth %lld±%lld s, acl %lld±%lld s)",
			p->backends_opt ? p->backends_opt : "http", p->use_cache ? "on" : "off",
			p->auth_ttl_s, p->auth_jitter_s, p->acl_ttl_s, p->acl_jitter_s);
	if(p->has_http){
		plog(MOSQ_LOG_INFO, "http: params %s, response %s, timeout %lld s; "
				"backend http://%s%s%s user uri %s superuser uri %s acl uri %s",
				p->params_mode == PARAMS_FORM ? "form" : "json",
				p->response_mode == RESPONSE_TEXT ? "text" : p->response_mode == RESPONSE_JSON ? "json" : "status",
				p->timeout_s, p->host, p->port[0] ? ":" : "", p->port, p->user_uri,
				(p->superuser_uri && p->superuser_uri[0] && !p->disable_superuser) ? p->superuser_uri : "(none)",
				p->acl_uri);
	}
	*userdata = p;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	struct plugin *p = userdata;

	(void)opts;
	(void)opt_count;
	if(!p) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(p->identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(p->identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	plugin_free(p);
	return MOSQ_ERR_SUCCESS;
}
