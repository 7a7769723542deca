// Embeds the policy files. The compiler's dependency file lists them, so editing a policy
// rebuilds this file and relinks the worker.
#include "cpolicies.h"

// #embed is standard C23 (`suffix(,)` adds the comma only when the file is not empty); clang
// accepts it in older language modes as an extension and warns, which this silences.
#pragma clang diagnostic ignored "-Wc23-extensions"

const char bulkhead_policy_worker_main[] = {
#embed "policies/worker-main.policy" suffix(,)
    0
};

const char bulkhead_policy_worker_vcpu[] = {
#embed "policies/worker-vcpu.policy" suffix(,)
    0
};

const char bulkhead_policy_witness[] = {
#embed "policies/witness.policy" suffix(,)
    0
};
