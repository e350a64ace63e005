import sys
sys.path.insert(0, ".")
import curves
from run_folder import read_run
pairs = [(f"results/comma/add7_prioritized_s{s}", f"results/draft_check/add7_prioritized_draft_s{s}") for s in range(3)]
rows = []
for plain, draft in pairs:
    a, b = read_run(plain), read_run(draft)
    fa, fb = a["rows"][-1]["acc_plus"], b["rows"][-1]["acc_plus"]
    ua, ub = curves.area_under_curve(a["rows"]), curves.area_under_curve(b["rows"])
    sa, sb = a["rows"][-1]["acc_plus_sampled"], b["rows"][-1]["acc_plus_sampled"]
    rows.append((plain[-1], fa, fb, ua, ub, sa, sb, a["rows"][-1]["minutes"], b["rows"][-1]["minutes"]))
print("| seed | final, token by token | final, draft | area, token by token | area, draft | sampled final, token by token / draft | minutes, token by token / draft |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} / {r[6]:.1f} | {r[7]:.1f} / {r[8]:.1f} |")
for name, i in (("final", 1), ("area", 3)):
    plain = [r[i] for r in rows]; draft = [r[i + 1] for r in rows]
    m0, h0 = curves.mean_ci(plain); m1, h1 = curves.mean_ci(draft); md, hd = curves.mean_ci([d - p for p, d in zip(plain, draft)])
    print(f"- {name}: token by token {m0:.1f} +- {h0:.1f}, draft {m1:.1f} +- {h1:.1f}; draft minus token by token, paired by seed: {md:+.1f} +- {hd:.1f}")
