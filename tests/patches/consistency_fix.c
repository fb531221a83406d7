/* A new encoding: encode and decode change together, and roundtrip (the
 * caller that holds an encoded value across a sleep) is in the patch so that
 * a thread inside it keeps the old pair until it returns. */
#include <armlp/livepatch.h>
#include <time.h>

ARMLP_PATCH("consistency-fix");

extern int encode(int v);
extern int decode(int x);

int encode_v2(int v) { return v + 2000; }
int decode_v2(int x) { return x - 2000; }

int roundtrip_v2(int v)
{
	int x = encode(v);
	struct timespec ts = { 0, 20000000 };
	nanosleep(&ts, NULL);
	return decode(x);
}

ARMLP_REPLACE(encode, encode_v2);
ARMLP_REPLACE(decode, decode_v2);
ARMLP_REPLACE(roundtrip, roundtrip_v2);
