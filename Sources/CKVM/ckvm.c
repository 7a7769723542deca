// CKVM is constants only (include/ckvm.h); SwiftPM wants a source file in a C target.
#include "ckvm.h"
