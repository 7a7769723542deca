// The worker's seccomp policies (Sources/CPolicies/policies/*.policy), embedded in the binary at
// build time with C23 #embed: the jailed worker opens no files, so its allowlists must be part of
// the executable it was verified as. Data only — parsing and compiling are Sources/Seccomp.
#ifndef CPOLICIES_H
#define CPOLICIES_H

// Each is the policy file's text followed by one NUL byte.
// "main": the worker's main thread, its control and device threads.
extern const char bulkhead_policy_worker_main[];
// "vcpu": added on top of "main" by every vCPU thread (a call must pass both).
extern const char bulkhead_policy_worker_vcpu[];

// "witness": bulkhead-witness once it has jailed itself.
extern const char bulkhead_policy_witness[];

// The same texts as pointers: Swift does not import arrays of unknown size.
static inline const char *bulkhead_policy_worker_main_text(void) { return bulkhead_policy_worker_main; }
static inline const char *bulkhead_policy_worker_vcpu_text(void) { return bulkhead_policy_worker_vcpu; }
static inline const char *bulkhead_policy_witness_text(void) { return bulkhead_policy_witness; }

#endif
