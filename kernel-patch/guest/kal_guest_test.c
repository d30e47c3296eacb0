// SPDX-License-Identifier: GPL-2.0
/* Project-side checks in the guest, beyond the kselftest (placeholder until extended). */
#include <stdio.h>
int main(void) { printf("kal_guest_test: ok\n"); return 0; }
