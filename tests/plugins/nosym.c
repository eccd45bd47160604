/* tests/plugins/nosym.c — a shared object without the koko_plugin_v1 descriptor. */
__attribute__((visibility("default"))) int nosym_answer(void);
int nosym_answer(void) { return 42; }
