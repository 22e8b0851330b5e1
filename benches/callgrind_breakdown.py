#!/usr/bin/env python3
"""Self instructions per call by category (callgrind, 30k minus 10k calls).

Usage: callgrind_breakdown.py OUT_DIR CONFIG [TOP_N]  (see callgrind.sh)."""
import subprocess,re,sys,collections
def load(f):
    out=subprocess.run(['callgrind_annotate','--auto=no','--threshold=100',f],capture_output=True,text=True).stdout
    d=collections.Counter()
    for line in out.splitlines():
        m=re.match(r'\s*([\d,]+) \([ \d.]+%\)\s+(.*)$',line)
        if not m: continue
        if 'PROGRAM TOTALS' in line: continue
        name=m.group(2)
        name=re.sub(r' \[.*\]$','',name)
        d[name]+=int(m.group(1).replace(',',''))
    return d
d=sys.argv[1]; cfg=sys.argv[2]; n=20000
a=load(f'{d}/{cfg}-10000.out'); b=load(f'{d}/{cfg}-30000.out')
diff={k:(b[k]-a.get(k,0))/n for k in b}
cats=collections.Counter()
rules=[('memcpy (moving futures)',r'memcpy|memmove'),
 ('clock reads',r'Timespec|clock_gettime|time::clock::now|Instant>::now|duration_since|sub_timespec|Start::now|Instant::now'),
 ('task-local scoping (Context)',r'task_local|Context::current|context::Context|Scoped'),
 ('malloc/free',r'malloc|_int_free|cfree|free\b|__rust_alloc|__rust_dealloc|alloc::alloc'),
 ('semaphore (concurrency)',r'batch_semaphore|semaphore'),
 ('timer (Sleep create/drop)',r'time::sleep|sleep_until|TimerEntry|timer::entry|Handle::current|scheduler::Handle'),
 ('drop_in_place (future teardown)',r'drop_in_place'),
]
for k,v in diff.items():
    for c,r in rules:
        if re.search(r,k): cats[c]+=v; break
    else: cats['other (layer logic, polls)']+=v
tot=sum(diff.values())
print(f'{cfg}: {tot:.0f} Ir/call')
for c,v in cats.most_common(): print(f'  {c:<34} {v:7.0f}  {100*v/tot:5.1f}%')
if len(sys.argv)>3:
    for k,v in sorted(diff.items(),key=lambda x:-x[1])[:int(sys.argv[3])]: print(f'{v:8.1f} {k[:200]}')
