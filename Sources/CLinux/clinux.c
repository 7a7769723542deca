#define _GNU_SOURCE   // setresuid, setresgid, getresuid, getresgid
#include <grp.h>
#include <linux/capability.h>
#include "clinux.h"
#include <sys/ioctl.h>

int clinux_ioctl(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
int clinux_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

int clinux_capget(uint32_t sets[6]) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    int r = (int)syscall(SYS_capget, &header, data);
    if (r != 0) return r;
    for (int i = 0; i < 2; i++) {
        sets[3 * i] = data[i].effective; sets[3 * i + 1] = data[i].permitted; sets[3 * i + 2] = data[i].inheritable;
    }
    return 0;
}
int clinux_capset(const uint32_t sets[6]) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    for (int i = 0; i < 2; i++) {
        data[i].effective = sets[3 * i]; data[i].permitted = sets[3 * i + 1]; data[i].inheritable = sets[3 * i + 2];
    }
    return (int)syscall(SYS_capset, &header, data);
}
int clinux_setgroups_none(void) { return setgroups(0, NULL); }
int clinux_setresgid(uint32_t gid) { return setresgid(gid, gid, gid); }
int clinux_setresuid(uint32_t uid) { return setresuid(uid, uid, uid); }
int clinux_getresuid(uint32_t ids[3]) { return getresuid(&ids[0], &ids[1], &ids[2]); }
int clinux_getresgid(uint32_t ids[3]) { return getresgid(&ids[0], &ids[1], &ids[2]); }
