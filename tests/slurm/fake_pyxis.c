/*
 * fake_pyxis: a SPANK plugin that accepts pyxis's srun options and runs the task on the host.
 *
 * The test cluster (tests/slurm/cluster.sh) has no pyxis/enroot, but NeMo-Run renders
 * `srun --container-image IMG --container-mounts SRC:DST[:ro],... --container-workdir DIR
 * --container-env NAME,...`. With this plugin that line runs unchanged: when --container-image is
 * given, each task gets a private mount namespace in which every SRC is bind-mounted on DST (DST is
 * created when missing; ":ro" remounts it read-only), then the task starts in --container-workdir.
 * The image itself is not used; the task sees it as $FAKE_PYXIS_IMAGE. --container-env names host
 * variables that override the image's environment: on the host they are already the environment, so
 * it is accepted and ignored, like the pyxis flags that only change the container (remap-root, ...).
 *
 * Build: gcc -shared -fPIC -o fake_pyxis.so fake_pyxis.c (needs libslurm-dev's slurm/spank.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <slurm/spank.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

SPANK_PLUGIN(fake_pyxis, 1);

enum { IMAGE, MOUNTS, WORKDIR, IGNORED };
static char *image, *mounts, *workdir;

static int set_option(int which, const char *arg, int remote) {
  (void)remote;
  if (which == IMAGE) image = strdup(arg);
  if (which == MOUNTS) mounts = strdup(arg);
  if (which == WORKDIR) workdir = strdup(arg);
  return 0;
}

struct spank_option spank_options[] = {
    {"container-image", "IMAGE", "[fake pyxis] run on the host; the image is $FAKE_PYXIS_IMAGE", 1,
     IMAGE, set_option},
    {"container-mounts", "SRC:DST[:ro],...", "[fake pyxis] bind mounts in a private namespace", 1,
     MOUNTS, set_option},
    {"container-workdir", "DIR", "[fake pyxis] the task's working directory", 1, WORKDIR, set_option},
    {"container-env", "NAME,...", "[fake pyxis] accepted; host variables are already the env", 1,
     IGNORED, set_option},
    {"container-name", "NAME", "[fake pyxis] accepted, ignored", 1, IGNORED, set_option},
    {"container-mount-home", NULL, "[fake pyxis] accepted, ignored", 0, IGNORED, set_option},
    {"no-container-mount-home", NULL, "[fake pyxis] accepted, ignored", 0, IGNORED, set_option},
    {"container-remap-root", NULL, "[fake pyxis] accepted, ignored", 0, IGNORED, set_option},
    {"no-container-remap-root", NULL, "[fake pyxis] accepted, ignored", 0, IGNORED, set_option},
    {"no-container-entrypoint", NULL, "[fake pyxis] accepted, ignored", 0, IGNORED, set_option},
    SPANK_OPTIONS_TABLE_END};

static int mkdirs(char *path) { /* mkdir -p; path is modified and restored */
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int rc = mkdir(path, 0755);
    *p = '/';
    if (rc && errno != EEXIST) return -1;
  }
  return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}

static int bind_one(char *spec) { /* SRC:DST[:FLAGS] */
  char *src = spec, *dst = strchr(spec, ':');
  if (!dst) dst = src; /* pyxis allows a bare PATH: same path inside */
  else *dst++ = '\0';
  char *flags = strchr(dst, ':');
  if (flags) *flags++ = '\0';
  struct stat st;
  if (stat(src, &st)) return slurm_error("fake_pyxis: mount source %s: %m", src), -1;
  if (strcmp(src, dst) == 0) return 0; /* already visible on the host */
  if (S_ISDIR(st.st_mode) ? mkdirs(dst) : (close(open(dst, O_CREAT | O_WRONLY, 0644)), 0))
    return slurm_error("fake_pyxis: mount target %s: %m", dst), -1;
  if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL))
    return slurm_error("fake_pyxis: bind %s on %s: %m", src, dst), -1;
  if (flags && strstr(flags, "ro") && mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL))
    return slurm_error("fake_pyxis: read-only %s: %m", dst), -1;
  return 0;
}

/* In the task, as root, before exec: its own mount namespace with the mounts applied. */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av) {
  (void)ac, (void)av;
  if (!image) return 0;
  spank_setenv(sp, "FAKE_PYXIS_IMAGE", image, 1);
  if (!mounts) return 0;
  if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
    return slurm_error("fake_pyxis: private mount namespace: %m"), -1;
  char *list = strdup(mounts), *save = NULL;
  int rc = 0;
  for (char *spec = strtok_r(list, ",", &save); spec && !rc; spec = strtok_r(NULL, ",", &save))
    rc = bind_one(spec);
  free(list);
  return rc;
}

/* After Slurm set the job's directory, just before exec: the container's working directory. */
int slurm_spank_task_init(spank_t sp, int ac, char **av) {
  (void)sp, (void)ac, (void)av;
  if (image && workdir && chdir(workdir))
    return slurm_error("fake_pyxis: --container-workdir %s: %m", workdir), -1;
  return 0;
}
