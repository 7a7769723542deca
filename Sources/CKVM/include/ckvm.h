// The kernel's KVM ABI made visible to Swift: ioctl request numbers, capability and exit
// constants and kvm_run field offsets (the ioctl(2) wrappers are CLinux's).
// Constants and wrappers only — every decision is made in Swift (Sources/KVM).
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

// ioctl request numbers (function-like macros do not import into Swift).
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;

// Capabilities.
static const int CKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY;
static const int CKVM_CAP_SYNC_REGS = KVM_CAP_SYNC_REGS;
static const int CKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const int CKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;
static const int CKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int CKVM_CAP_SET_TSS_ADDR = KVM_CAP_SET_TSS_ADDR;
static const int CKVM_API_VERSION = KVM_API_VERSION;
static const uint64_t CKVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
static const uint64_t CKVM_SYNC_X86_SREGS = KVM_SYNC_X86_SREGS;
static const int CKVM_MAX_CPUID_ENTRIES = 256;

// Exit reasons.
static const uint32_t CKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t CKVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const uint32_t CKVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t CKVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t CKVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t CKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t CKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t CKVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t CKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t CKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const uint8_t CKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;
static const uint8_t CKVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;

// struct kvm_run field offsets (the kernel ABI; read from the header, not assumed).
static const size_t CKVM_RUN_REQUEST_INTERRUPT_WINDOW = offsetof(struct kvm_run, request_interrupt_window);
static const size_t CKVM_RUN_IMMEDIATE_EXIT = offsetof(struct kvm_run, immediate_exit);
static const size_t CKVM_RUN_EXIT_REASON = offsetof(struct kvm_run, exit_reason);
static const size_t CKVM_RUN_IO_DIRECTION = offsetof(struct kvm_run, io.direction);
static const size_t CKVM_RUN_IO_SIZE = offsetof(struct kvm_run, io.size);
static const size_t CKVM_RUN_IO_PORT = offsetof(struct kvm_run, io.port);
static const size_t CKVM_RUN_IO_COUNT = offsetof(struct kvm_run, io.count);
static const size_t CKVM_RUN_IO_DATA_OFFSET = offsetof(struct kvm_run, io.data_offset);
static const size_t CKVM_RUN_MMIO_PHYS_ADDR = offsetof(struct kvm_run, mmio.phys_addr);
static const size_t CKVM_RUN_MMIO_DATA = offsetof(struct kvm_run, mmio.data);
static const size_t CKVM_RUN_MMIO_LEN = offsetof(struct kvm_run, mmio.len);
static const size_t CKVM_RUN_MMIO_IS_WRITE = offsetof(struct kvm_run, mmio.is_write);
static const size_t CKVM_RUN_FAIL_ENTRY_REASON = offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason);
static const size_t CKVM_RUN_INTERNAL_SUBERROR = offsetof(struct kvm_run, internal.suberror);
static const size_t CKVM_RUN_SYSTEM_EVENT_TYPE = offsetof(struct kvm_run, system_event.type);
static const size_t CKVM_RUN_VALID_REGS = offsetof(struct kvm_run, kvm_valid_regs);
static const size_t CKVM_RUN_DIRTY_REGS = offsetof(struct kvm_run, kvm_dirty_regs);
static const size_t CKVM_RUN_SYNC_REGS = offsetof(struct kvm_run, s.regs.regs);
static const size_t CKVM_RUN_SYNC_SREGS = offsetof(struct kvm_run, s.regs.sregs);

// Doorbells and interrupts: ioeventfd / irqfd (KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD).
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const int CKVM_CAP_IOEVENTFD = KVM_CAP_IOEVENTFD;
static const int CKVM_CAP_IRQFD = KVM_CAP_IRQFD;
static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const uint32_t CKVM_IOEVENTFD_FLAG_DEASSIGN = KVM_IOEVENTFD_FLAG_DEASSIGN;

// Interrupt controllers and timers for Linux guests.
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const int CKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int CKVM_CAP_PIT2 = KVM_CAP_PIT2;

#endif
