extern int calls_many(int);
extern int call_dup_a(int);
extern int call_dup_b(int);
extern int asm_frame(int, int);
int main(int argc, char **argv) {
    (void)argv;
    return (calls_many(argc) + call_dup_a(argc) + call_dup_b(argc) + asm_frame(argc, 1)) & 1;
}
