#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "xorshift.h"

unsigned long checks, failures;
static uint64_t rng_state;

uint64_t test_rand(void)
{
	return xorshift64(&rng_state);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} suites[] = {
		{ "fmt", test_fmt },
		{ "parse", test_parse },
		{ "crc_record", test_crc_record },
		{ "vring", test_vring },
		{ "net", test_net },
		{ "kv", test_kv },
		{ "kvtable", test_kvtable },
	};
	const char *only = argc > 1 ? argv[1] : NULL;

	rng_state = xorshift_seed(20240601);
	for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
		unsigned long f0 = failures, c0 = checks;
		if (only != NULL && strcmp(only, suites[i].name) != 0)
			continue;
		suites[i].fn();
		printf("suite %-10s %8lu checks %lu failures\n", suites[i].name, checks - c0,
		       failures - f0);
	}
	printf("harness: %lu checks, %lu failures\n", checks, failures);
	return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
