int helper_old(int x) { return x + 1; }
