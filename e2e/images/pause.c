/* The sandbox ("pause") container of every pod: holds the pod's namespaces open, reaps zombies and
 * exits on SIGINT/SIGTERM. Built with `gcc -static` into a scratch image by e2e/images/build. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

static void on(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, 0);
}

int main(void) {
    on(SIGINT, stop);
    on(SIGTERM, stop);
    on(SIGCHLD, reap);
    for (;;) pause();
}
