/*
 * The pod sandbox's one process (the "pause" container containerd starts for
 * every pod): it holds the pod's namespaces, reaps what it adopts, and exits
 * on SIGINT or SIGTERM. Built static: in an image FROM scratch by
 * tests/src/kube.rs, so the Kubernetes tests pull nothing they did not build,
 * and into the pod VM's /pause_bundle by containers/podvm/build.sh --coco,
 * where kata-agent starts the sandbox from it instead of pulling one.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {.sa_handler = stop};
    struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (getpid() != 1) {
        /* Not a sandbox: nothing to hold. */
        return 1;
    }
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;)
        pause();
}
