/* SPDX-License-Identifier: MIT */
/*
 * Test hook of storage/crypto (module-private; only tests include it).
 *
 * Fault injection in the spirit of SQLite's faultsim and curl's torture
 * mode: every allocation and every libcrypto call in crypto.c passes a
 * "fault point". crypto_fault_inject(n) makes the n-th fault point from now
 * fail (1 = the next one) as if malloc or OpenSSL had failed; 0 disables.
 * A test loops n = 1, 2, ... over seal/open and checks that every failure
 * is reported cleanly (no crash, no leak under ASan). The counter is an
 * _Atomic, but injecting is meant for single-threaded tests; with the hook
 * disabled a fault point costs one relaxed load.
 */
#ifndef STORAGE_CRYPTO_INT_H
#define STORAGE_CRYPTO_INT_H

void crypto_fault_inject(int n);

#endif
